"""fastfer models: APViT (IR-50 trunk + APP + ViT with ATP) and the shared IR-50 trunk.

Importing this package registers the models with timm (``timm.create_model("apvit")``); it builds nothing.
"""
from fastfer.models.apvit import APViT
from fastfer.models.irse import IRSE
from fastfer.models.registry import create_model

__all__ = ["APViT", "IRSE", "create_model"]
