"""Shared helpers for the bench tests: a captured runner and the tiny, fast settings."""
import contextlib
import io

import pytest

from glnet_lightning.cli.bench import main


def _run(argv):
    """main() with captured stdout/stderr (module-scoped fixtures cannot use capsys)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="session")
def run_bench():
    return _run


@pytest.fixture(scope="session")
def fast_args():
    """Batch 2, one warm-up, two repeats, a small GEMM reference: seconds, not minutes."""
    return ["--batch-size", "2", "--warmup", "1", "--repeats", "2", "--gemm-size", "256"]
