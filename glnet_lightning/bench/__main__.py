"""``python -m glnet_lightning.bench`` -- same as ``glnet bench`` before the CLI is wired."""
import sys

from .cli import main

sys.exit(main())
