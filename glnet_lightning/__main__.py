"""``python -m glnet_lightning ...`` is the ``glnet`` command.

Why: runners that start fits as subprocesses (the sweep grid) need a form that works without the
console script on PATH and that Lightning's DDP launcher can re-execute per rank (it re-runs
``python -m MODULE`` with the same arguments; a ``python -c`` command cannot be re-run that way).
"""
import sys

from glnet_lightning.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
