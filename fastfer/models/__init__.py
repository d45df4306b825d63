"""fastfer models: APViT (IR-50 trunk + APP + ViT with ATP) and the shared IR-50 trunk.

Importing this package registers the models with timm (``timm.create_model("apvit")``); it builds nothing.
"""
from fastfer.models.apvit import APViT
from fastfer.models.conv_cut import ConvCut
from fastfer.models.fer_former import FerFormer, FerFormerLoss
from fastfer.models.irse import IRSE
from fastfer.models.registry import create_model

__all__ = ["APViT", "ConvCut", "FerFormer", "FerFormerLoss", "IRSE", "create_model"]
