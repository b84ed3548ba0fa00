"""``python -m glnet_lightning.bench``: the same command as ``glnet bench``."""
import sys

from .cli import main

sys.exit(main())
