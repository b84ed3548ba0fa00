"""The test suite's helpers, one of each: the tiny model, the tiny Fashion-MNIST run, the JPEG tree, the
console scripts as a user runs them, waiting for a run and signalling it, comparing checkpoints.

Importable as ``testkit`` (``pythonpath = tests`` in setup.cfg); its fixtures are the pytest plugin
``testkit.plugin``; ``testkit.probes`` holds the callbacks that runs load by class path
(``--trainer.callbacks+=testkit.probes.MarkProgress``), in process and in subprocesses.
"""
from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent
CONFIGS = REPO / "configs"

# ------------------------------------------------------------------------------------ the tiny model
#: The one tiny GLNet of the suite: all four stages GLMix, 16-64 channels, 4 slots (about 60 k parameters).
TINY = {"depths": [1, 1, 1, 1], "dims": [16, 32, 48, 64], "head_dim": 16,
        "stage_mixers": ["glmix", "glmix", "glmix", "glmix"], "num_slots": 4}


def tiny(**edits: Any) -> dict[str, Any]:
    """A fresh copy of :data:`TINY` with ``edits`` applied (lists copied, so callers may change them)."""
    return {**{k: list(v) if isinstance(v, list) else v for k, v in TINY.items()}, **edits}


def tiny_named(**edits: Any) -> dict[str, Any]:
    """:func:`tiny` without its ``stage_mixers`` (unless edited): a named model (``glnet_4g``, ...) at the tiny
    sizes keeps its own block types, stem, transitions, layer scale and hidden dwconv."""
    sizes = tiny(**edits)
    if "stage_mixers" not in edits:
        del sizes["stage_mixers"]
    return sizes


def tiny_named_models() -> list[str]:
    """The named models that are distinct networks at :func:`tiny_named` sizes (``glnet_9g`` is ``glnet_4g``
    there, only their widths differ): computed from the one table, so a model that starts to differ joins."""
    from glnet_lightning.models import MODEL_NAMES, resolve_backbone

    seen: dict[str, str] = {}
    for name in MODEL_NAMES:
        settings = repr(sorted(resolve_backbone(name, **tiny_named()).settings().items()))
        seen.setdefault(settings, name)
    return list(seen.values())


def _flow(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_flow(v) for v in value) + "]"
    return "null" if value is None else str(value)


def tiny_flow(**edits: Any) -> str:
    """The tiny model as one YAML flow mapping: ``--model.backbone={depths: [1, 1, 1, 1], ...}``."""
    return "{" + ", ".join(f"{k}: {_flow(v)}" for k, v in tiny(**edits).items()) + "}"


def tiny_sets(**edits: Any) -> list[str]:
    """The tiny model as ``--set`` assignments of the sweep commands: ``model.backbone.depths=[1,1,1,1]``, ..."""
    return [f"model.backbone.{k}={_flow(v).replace(' ', '')}" for k, v in tiny(**edits).items()]


def tiny_spec(**edits: Any) -> str:
    """The tiny model in the ``NAME:key=value`` syntax of ``glnet bench`` and ``--model`` options."""
    return "glnet_stl:" + ",".join(f"{k}={_flow(v).replace(' ', '')}" for k, v in tiny(**edits).items())


# ------------------------------------------------------------------------------------ the tiny run
def tiny_args(root: Path, train_batches: int = 4, val_batches: int = 2, epochs: int = 1,
              test_after_fit: bool = False, **model: Any) -> list[str]:
    """configs/fashion_mnist.yaml shrunk to seconds: the tiny model, 32-image batches, a few batches."""
    return [
        "--config", str(CONFIGS / "fashion_mnist.yaml"),
        f"--test_after_fit={str(test_after_fit).lower()}",
        "--trainer.default_root_dir", str(root),
        "--trainer.max_epochs", str(epochs),
        "--trainer.limit_train_batches", str(train_batches),
        "--trainer.limit_val_batches", str(val_batches),
        "--trainer.limit_test_batches", "2",
        "--trainer.limit_predict_batches", "2",
        "--trainer.log_every_n_steps", "1",
        "--trainer.num_sanity_val_steps", "0",
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        f"--model.backbone={tiny_flow(**model)}",
        "--model.warmup_epochs", "0",
        "--data.init_args.batch_size", "32",
        "--data.init_args.num_workers", "0",
    ]


#: What a user on a CPU machine changes in an ImageNet config (hardware, steps, batch, workers, image
#: size; never the network), as LightningCLI / ``--set`` keys.
CPU_OVERRIDES = {
    "trainer.accelerator": "cpu", "trainer.devices": 1, "trainer.strategy": "auto",
    "trainer.precision": "32-true", "trainer.max_epochs": 1, "trainer.limit_train_batches": 2,
    "trainer.limit_val_batches": 2, "trainer.log_every_n_steps": 1, "trainer.enable_progress_bar": False,
    "data.batch_size": 4, "data.num_workers": 0, "data.image_size": 64,
}


def _text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def glnet_ok(capsys, *args: str) -> str:
    """``glnet ARGS`` in this process (what the console script runs); its stdout, failing on a non-zero exit."""
    from glnet_lightning.cli.main import main as glnet

    capsys.readouterr()
    code = glnet(list(args))
    out, err = capsys.readouterr()
    assert code == 0, f"glnet {' '.join(args)} -> {code}\n{out[-2000:]}\n{err[-4000:]}"
    return out


def fit_args(overrides: dict) -> list[str]:
    """``--key value`` pairs as on the ``glnet fit`` command line."""
    return [arg for key, value in overrides.items() for arg in (f"--{key}", _text(value))]


def set_args(overrides: dict | Sequence[str]) -> list[str]:
    """``--set key=value`` pairs as on the ``glnet sweep`` command lines (a dict, or ready ``key=value`` texts)."""
    texts = overrides if not isinstance(overrides, dict) else [f"{k}={_text(v)}" for k, v in overrides.items()]
    return [arg for text in texts for arg in ("--set", text)]


# ------------------------------------------------------------------------------------ images on disk
def save_jpeg(path: Path, mode: str = "RGB", size: tuple[int, int] = (48, 40), seed: int = 0) -> Path:
    """A random-noise JPEG file of ``size`` (width, height) in ``mode``."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rgb = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")
    rgb.convert(mode).save(path, format="JPEG", quality=95)
    return path


def jpeg_tree(root: Path, classes: Sequence[str], per_class: dict[str, int], *,
              sizes: Sequence[tuple[int, int]] = ((48, 40),), special: dict[str, str] | None = None) -> Path:
    """An ImageNet-layout tree ``root/<split>/<class>/<split>_<class>_<i>.JPEG`` of random-noise JPEGs.

    ``per_class``: images per class of each split; ``sizes``: cycled through; ``special``: file path
    (relative to ``root``) -> PIL mode for the images that must be grayscale, CMYK, ..."""
    seed = 0
    for split, count in per_class.items():
        for c, name in enumerate(classes):
            for i in range(count):
                seed += 1
                relative = f"{split}/{name}/{split}_{name}_{i}.JPEG"
                save_jpeg(root / relative, (special or {}).get(relative, "RGB"), sizes[(c + i) % len(sizes)], seed)
    return root


def ade20k_tree(root: Path, num_classes: int = 150, per_split: dict[str, int] | None = None, *,
                sizes: Sequence[tuple[int, int]] = ((67, 45), (50, 71), (64, 64), (83, 59)),
                gray: Sequence[str] = ("training/ADE_training_00000001",)) -> Path:
    """An ``ADEChallengeData2016``-layout tree: ``images/<split>/<stem>.jpg`` random-noise JPEGs (``sizes`` (width,
    height) cycled, the ``gray`` stems grayscale) with ``annotations/<split>/<stem>.png`` of 8 px blocks of labels
    0..``num_classes`` (0, ADE20K's "other", in every annotation)."""
    from PIL import Image

    seed = 0
    for split, count in (per_split or {"training": 4, "validation": 3}).items():
        for i in range(1, count + 1):
            seed += 1
            stem = f"{split}/ADE_{split}_{i:08d}"
            width, height = sizes[seed % len(sizes)]
            save_jpeg(root / "images" / f"{stem}.jpg", "L" if stem in gray else "RGB", (width, height), seed)
            rows, cols = np.mgrid[:height, :width]
            labels = (rows // 8 * 3 + cols // 8 + seed) % (num_classes + 1)
            labels[:8, :8] = 0
            (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
            Image.fromarray(labels.astype(np.uint8), "L").save(root / "annotations" / f"{stem}.png")
    return root


#: The unreadable files of the ``broken_tree`` fixture, relative to its root: random bytes, then a truncated JPEG.
BAD_FILES = ["train/cat/cat_bad.JPEG", "train/dog/dog_truncated.JPEG"]
#: The classes of the ``broken_tree`` fixture, in the order a data module lists them.
BROKEN_TREE_CLASSES = ["cat", "dog", "fox"]


# ------------------------------------------------------------------------------------ the console scripts
def console(script: str) -> list[str]:
    """The installed console script (``glnet``, ``lightning``), or the same entry point through this interpreter."""
    beside = Path(sys.executable).parent / script  # the venv's own script, even when it is not activated
    if beside.is_file():
        return [str(beside)]
    path = shutil.which(script)
    if path:
        return [path]
    func = {"glnet": "main", "lightning": "lightning_main"}[script]
    return [sys.executable, "-c", f"import sys; from glnet_lightning.cli.main import {func}; sys.exit({func}())"]


def subprocess_env(**extra: str) -> dict[str, str]:
    """This environment with ``tests/`` importable (so runs load ``testkit.probes`` callbacks)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), env.get("PYTHONPATH")]))
    # Idle OpenMP threads sleep instead of spinning: on 2 shared cores spinning threads of concurrent
    # processes slow each other down by an order of magnitude.
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env.update(extra)
    return env


def run_script(script: str, args: Sequence[str], timeout: float = 600, check: bool = False,
               **kwargs: Any) -> subprocess.CompletedProcess:
    """Run a console script from the repository root as a user would; ``check``: fail the test on a non-zero exit."""
    kwargs.setdefault("env", subprocess_env())
    kwargs.setdefault("cwd", REPO)
    result = subprocess.run(console(script) + list(args), capture_output=True, text=True, timeout=timeout, **kwargs)
    if check:
        assert result.returncode == 0, f"{script} {' '.join(map(str, args))}\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result


def one_error_line(stderr: str, prog: str = "glnet") -> str:
    """The single ``<prog>: error: ...`` line of ``stderr``; fails on a traceback or several errors."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(f"{prog}: error:")]
    assert len(errors) == 1, stderr[-3000:]
    assert not any("Traceback" in line for line in lines), stderr[-3000:]
    return errors[0]


# ------------------------------------------------------------------------------------ runs and signals
def progress(run: Path) -> int:
    """The last optimizer step a run with ``testkit.probes.MarkProgress`` finished (0 before the first)."""
    try:
        return int((run / "progress.txt").read_text() or 0)
    except (FileNotFoundError, ValueError):
        return 0


def signal_when(proc: subprocess.Popen, ready: Callable[[], bool], signum: int, timeout: float = 300,
                group: bool = False) -> str:
    """Wait until ``ready()`` (failing if the process ends first or time runs out), send ``signum`` (to its
    whole process group with ``group``: a scheduler's kill of a job, DDP ranks and workers too), wait for
    it to end; returns its stderr when piped. The process never outlives the call.

    A piped stderr is read all along: a run that fills the pipe (DDP ranks, warnings) before it is ready
    would otherwise block on the write and never get there."""
    chunks: list = []
    reader = None
    if proc.stderr is not None:
        empty = "" if isinstance(proc.stderr, io.TextIOBase) else b""
        reader = threading.Thread(target=lambda: chunks.extend(iter(proc.stderr.readline, empty)), daemon=True)
        reader.start()

    def stderr(wait: float = 300) -> str:
        if reader is None:
            return ""
        reader.join(timeout=wait)  # until every process holding the pipe (workers, ranks) has closed it
        return empty.join(chunks)

    def kill() -> None:
        os.killpg(proc.pid, signal.SIGKILL) if group else proc.kill()
        proc.wait()

    try:
        deadline = time.monotonic() + timeout
        while not ready():
            if proc.poll() is not None:
                raise AssertionError(f"the run ended early with {proc.returncode}: {stderr()[-3000:]}")
            if time.monotonic() > deadline:
                kill()  # what it wrote until then says where it hung
                raise AssertionError(f"timed out waiting for the run: {stderr(wait=10)[-3000:]}")
            time.sleep(0.05)
        if group:
            os.killpg(proc.pid, signum)
        else:
            proc.send_signal(signum)
        proc.wait(timeout=300)
        return stderr()
    finally:
        if proc.poll() is None:
            kill()


def scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    """(step, value) of a TensorBoard scalar of a run directory, in order; [] when it was never logged."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)] if tag in events.Tags()["scalars"] else []


# ------------------------------------------------------------------------------------ comparing states
def max_difference(a: Any, b: Any) -> float:
    """Largest absolute difference between two nested states' tensors (0.0: bit-identical; inf: other
    structure, dtype, shape or a differing non-tensor value)."""
    import torch

    if isinstance(a, dict):
        if not isinstance(b, dict) or a.keys() != b.keys():
            return float("inf")
        return max((max_difference(a[k], b[k]) for k in a), default=0.0)
    if isinstance(a, (list, tuple)):
        if not isinstance(b, (list, tuple)) or len(a) != len(b):
            return float("inf")
        return max((max_difference(x, y) for x, y in zip(a, b)), default=0.0)
    if isinstance(a, torch.Tensor):
        if not isinstance(b, torch.Tensor) or a.shape != b.shape or a.dtype != b.dtype:
            return float("inf")
        if torch.equal(a, b):
            return 0.0
        return float((a.double() - b.double()).abs().max()) if a.is_floating_point() else float("inf")
    return 0.0 if a == b else float("inf")


def same(a: Any, b: Any) -> bool:
    """Nested states (dicts, lists, tensors, values) equal bit for bit."""
    return max_difference(a, b) == 0.0


# ------------------------------------------------------------------------------------ published weights files
def published_state_dict(conformance: Path, name: str, values: str = "random") -> dict[str, Any]:
    """A state dict with exactly the keys and shapes of the published ``name`` checkpoint (reference layout,
    1000 classes; from the key manifests kept with the conformance fixtures, ``<name>.keys.txt``).

    ``values="random"``: seeded values in [0, 0.1), positive, so BatchNorm variances are valid and a run on it
    gives finite numbers. ``values="zeros"``: one zero expanded to each shape, for tests that read the keys
    only (the file saved is kilobytes, not the published 120 MB)."""
    import json

    import torch

    generator = torch.Generator().manual_seed(0)
    lines = (conformance / f"{name}.keys.txt").read_text().splitlines()
    rows = [line.split("\t") for line in lines if line.strip() and not line.startswith("#")]
    if values == "zeros":
        return {key: torch.zeros(()).expand(json.loads(shape)) for key, shape in rows}
    return {key: torch.rand(json.loads(shape), generator=generator) * 0.1 for key, shape in rows}
