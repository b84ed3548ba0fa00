"""glnet-lightning: GLNet / GLMix backbones, their timm registration and a Lightning research stack.

Importing the package registers the named models (``glnet_stl``, ``glnet_stl_paramslot``,
``glnet_4g``, ``glnet_9g``, ``glnet_16g``) with timm.
"""
import logging

from . import models  # noqa: F401  (registers the timm models)
from .models import GLNet

__all__ = ["GLNet", "models"]
__version__ = "0.1.0"

# Our INFO notes (e.g. a shortcut ignored for an absent branch) reach the terminal the
# way Lightning's own do: a handler of our own unless the application has configured logging.
_logger = logging.getLogger(__name__)
if not logging.getLogger().hasHandlers() and not _logger.handlers:
    _logger.setLevel(logging.INFO)
    _logger.addHandler(logging.StreamHandler())
    _logger.propagate = False
