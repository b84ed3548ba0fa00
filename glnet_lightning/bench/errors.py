"""The one exception type the benchmark raises for user-facing problems.

The CLI turns it into a one-line message and a non-zero exit code, so anything
raised as ``BenchError`` must read well without a traceback.
"""
from glnet_lightning.errors import UserError


class BenchError(UserError):
    """A bad argument, an unknown model or a model that fails to run."""
