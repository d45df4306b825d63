"""fastfer models: APViT (IR-50 trunk + APP + ViT with ATP) and the shared IR-50 trunk."""
from fastfer.models.irse import IRSE

__all__ = ["IRSE"]
