"""glnet-lightning: GLNet / GLMix backbones, their timm registration and a Lightning research stack.

Importing the package registers the named models (``glnet_stl``, ``glnet_stl_paramslot``,
``glnet_4g``, ``glnet_9g``, ``glnet_16g``) with timm.
"""
from . import models  # noqa: F401  (registers the timm models)
from .models import GLNet

__all__ = ["GLNet", "models"]
__version__ = "0.1.0"
