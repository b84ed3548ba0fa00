"""The suite's fixtures (loaded as a pytest plugin by tests/conftest.py): the external data and servers a
test needs, and what is costly to make and only read by its users, made once per session.

Helpers that are plain functions (the tiny model, console scripts, signals, comparisons) are imported
from :mod:`testkit` directly.
"""
from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from . import BAD_FILES, BROKEN_TREE_CLASSES, REPO, jpeg_tree, save_jpeg


def required(found, missing: str):
    """Tests that need an external file skip on a developer's machine without it, but fail in CI."""
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(missing)
        pytest.skip(missing)
    return found


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _lightning_logs_outside_capsys(request):
    """``lightning`` and ``torchmetrics`` give their loggers a handler bound to ``sys.stderr`` when first
    imported. Imported by a test under ``capsys`` (an in-process ``main([...])``), that is the test's capture
    stream, closed afterwards: every later log line is then a ``--- Logging error ---`` traceback on the
    stderr of whichever test runs next. So import them before ``capsys`` starts (autouse fixtures come first)."""
    if "capsys" in request.fixturenames and "lightning" not in sys.modules:
        import lightning  # noqa: F401
        import torchmetrics  # noqa: F401


@pytest.fixture(scope="session")
def conformance() -> Path:
    """The reference implementation's outputs kept with the tests (tests/models/conformance), or $GLNET_CONFORMANCE_DIR."""
    candidates = [os.environ.get("GLNET_CONFORMANCE_DIR"), REPO / "tests" / "models" / "conformance"]
    found = next((Path(c) for c in candidates if c and Path(c).is_dir()), None)
    return required(found, "conformance fixtures not found: expected tests/models/conformance or $GLNET_CONFORMANCE_DIR")


@pytest.fixture(scope="session")
def fashion_mnist() -> Path:
    from glnet_lightning.data import find_system_fashion_mnist

    return required(find_system_fashion_mnist(), "Fashion-MNIST not installed: the Debian package "
                                                 "dataset-fashion-mnist is required")


#: The settings of the shared fashion-scenes trees (``prepare_scenes`` keywords); tests regenerate the same
#: scenes in memory with ``make_scenes(n, size=..., seed=..., split=...)`` to compare.
FASHION_SCENES = {"num_train": 16, "num_val": 8, "size": 64, "seed": 0}


@pytest.fixture(scope="session")
def fashion_scenes_ade20k(fashion_mnist, tmp_path_factory) -> Path:
    """:data:`FASHION_SCENES` in the ADE20K layout: the ``ADEChallengeData2016`` folder. Read only."""
    from glnet_lightning.data.fashion_scenes import prepare_scenes

    root = tmp_path_factory.mktemp("fashion_scenes_ade20k") / "ADEChallengeData2016"
    return prepare_scenes(root, "ade20k", fashion_mnist=fashion_mnist, **FASHION_SCENES)


@pytest.fixture(scope="session")
def fashion_scenes_coco(fashion_mnist, tmp_path_factory) -> Path:
    """:data:`FASHION_SCENES` in the COCO layout (``{train,val}2017/``, ``annotations/``). Read only."""
    from glnet_lightning.data.fashion_scenes import prepare_scenes

    root = tmp_path_factory.mktemp("fashion_scenes_coco") / "coco"
    return prepare_scenes(root, "coco", fashion_mnist=fashion_mnist, **FASHION_SCENES)


# ------------------------------------------------------------------------------------ images on disk
@pytest.fixture(scope="session")
def imagenet_tree(tmp_path_factory) -> Path:
    """What the ImageNet configs read: ``train/`` and ``val/`` with 4 classes of random-noise JPEGs at odd
    sizes (one grayscale image per split), 6 training and 2 validation images per class."""
    root = tmp_path_factory.mktemp("imagenet_tree")
    classes = [f"n0{c:07d}" for c in range(4)]
    gray = {f"{split}/{classes[1]}/{split}_{classes[1]}_0.JPEG": "L" for split in ("train", "val")}
    return jpeg_tree(root, classes, {"train": 6, "val": 2},
                     sizes=[(75, 61), (120, 97), (64, 64), (97, 130), (50, 77), (143, 89)], special=gray)


@pytest.fixture(scope="session")
def ade20k_tree(tmp_path_factory) -> Path:
    """What the ADE20K configs read (``testkit.ade20k_tree``): 4 training and 3 validation images at odd sizes (one
    grayscale) with annotations holding label 0 ("other") and values up to 150. Read only: copy it to break it."""
    from . import ade20k_tree as make_tree

    return make_tree(tmp_path_factory.mktemp("ade20k") / "ADEChallengeData2016")


@pytest.fixture(scope="session")
def broken_tree(tmp_path_factory) -> Path:
    """What the folder data module must cope with. train: 4 cat (1 garbage), 4 dog (1 truncated), 3 fox
    (1 grayscale, 1 CMYK), and a text file; val: 2 per class (1 grayscale). Readable JPEGs are 48x40."""
    root = tmp_path_factory.mktemp("broken_tree")
    seed = 0
    for name in BROKEN_TREE_CLASSES:
        for i in range(3 if name != "fox" else 1):
            seed += 1
            save_jpeg(root / "train" / name / f"{name}_{i}.JPEG", seed=seed)
        for i in range(2):
            seed += 1
            save_jpeg(root / "val" / name / f"{name}_val_{i}.JPEG", mode="L" if i else "RGB", seed=seed)
    save_jpeg(root / "train" / "fox" / "fox_gray.JPEG", mode="L", seed=100)
    save_jpeg(root / "train" / "fox" / "fox_cmyk.JPEG", mode="CMYK", seed=101)
    (root / BAD_FILES[0]).write_bytes(np.random.default_rng(5).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    whole = save_jpeg(root / BAD_FILES[1], seed=102).read_bytes()
    (root / BAD_FILES[1]).write_bytes(whole[: len(whole) // 2])
    (root / "train" / "cat" / "notes.txt").write_text("not an image, must be ignored")
    return root


# ------------------------------------------------------------------------------------ trained checkpoints
@dataclass(frozen=True)
class FitCheckpoint:
    """A ``fit`` checkpoint of the tiny GLNet (4 classes) whose raw and EMA weights differ."""

    path: Path
    raw: dict[str, torch.Tensor]  # the model's state dict, our names
    ema: dict[str, torch.Tensor]  # the EMA copy's state dict


@pytest.fixture(scope="session")
def fit_checkpoint(tmp_path_factory) -> FitCheckpoint:
    """Made once; readers must not write to ``path`` (copy it first)."""
    from .data import fit_tiny

    path, module = fit_tiny(tmp_path_factory.mktemp("fit_checkpoint"))
    raw = {k: v.detach().clone() for k, v in module.model.state_dict().items()}
    ema = {k: v.detach().clone() for k, v in module.ema_model.state_dict().items()}
    assert not torch.equal(raw["head.weight"], ema["head.weight"])
    return FitCheckpoint(path, raw, ema)


# ------------------------------------------------------------------------------------ PostgreSQL
# A throwaway server for the shared-study tests: started in a temp dir on a free localhost port
# (initdb + pg_ctl, as user postgres when the tests run as root, since PostgreSQL refuses to run
# as root), stopped at the end. No mock: Optuna talks to a real server.
def _pg_bin() -> Path | None:
    """The server binaries: Debian's versioned folder (newest first), else the folder of pg_ctl on PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]), reverse=True)
    if found:
        return Path(found[0]).parent
    on_path = shutil.which("pg_ctl")
    return Path(on_path).parent if on_path and (Path(on_path).parent / "createdb").exists() else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """``postgresql://postgres@127.0.0.1:PORT/optuna`` of a fresh server, removed after the test."""
    bin_dir = required(_pg_bin(), "PostgreSQL server not installed (Debian package postgresql; scripts/setup.sh "
                                  "installs it)")
    try:
        import psycopg  # noqa: F401  (SQLAlchemy's default driver for postgresql:// URLs)
    except ImportError:
        required(None, "the PostgreSQL driver psycopg is missing: pip install 'glnet-lightning[sweeps]'")
    folder = Path(tempfile.mkdtemp(prefix="glnet-postgres-"))  # pytest's tmp dirs are private to root
    data, sockets = folder / "data", folder / "sockets"
    sockets.mkdir()
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
        shutil.chown(sockets, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    port = _free_port()

    def run(*command: str) -> None:
        result = subprocess.run([*as_user, *command], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, f"{command[0]} failed: {result.stdout[-2000:]}{result.stderr[-2000:]}"

    run(str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
    run(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(folder / "server.log"), "-w", "-t", "60",
        "-o", f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1", "start")
    try:
        run(str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "optuna")
        yield f"postgresql://postgres@127.0.0.1:{port}/optuna"
    finally:
        subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                       capture_output=True, timeout=120)
        shutil.rmtree(folder, ignore_errors=True)


# ------------------------------------------------------------------------------------ token labels
@pytest.fixture(scope="session")
def imagenet_token_labels(imagenet_tree, tmp_path_factory) -> Path:
    """LV-ViT-style label maps for the training images of ``imagenet_tree``: ``DIR/<class>/<image stem>.pt``,
    each a (2, k=3, S=8, S=8) float tensor (top-k scores, top-k class indices as floats) whose top class is
    the image's own everywhere, the other two classes in a random order per map, scores varying per cell."""
    root = tmp_path_factory.mktemp("imagenet_token_labels")
    classes = sorted(p.name for p in (imagenet_tree / "train").iterdir())
    g = torch.Generator().manual_seed(27)
    for index, name in enumerate(classes):
        (root / name).mkdir()
        for image in sorted((imagenet_tree / "train" / name).iterdir()):
            others = [c for c in range(len(classes)) if c != index]
            order = torch.tensor([index] + [others[i] for i in torch.randperm(len(others), generator=g)[:2]])
            scores = torch.rand(3, 8, 8, generator=g).sort(0, descending=True).values
            scores *= torch.tensor([8.0, 2.0, 1.0]).view(3, 1, 1)
            label_map = torch.stack([scores, order.float().view(3, 1, 1).expand(3, 8, 8)])
            torch.save(label_map.clone(), root / name / f"{image.stem}.pt")
    return root


# ------------------------------------------------------------------------------------ COCO layout
#: The categories of ``coco_tree``: ids with gaps, as COCO's (labels 1..3 in id order).
COCO_TREE_CATEGORIES = [{"id": 3, "name": "square"}, {"id": 7, "name": "disc"}, {"id": 11, "name": "bar"}]


@pytest.fixture(scope="session")
def coco_tree(tmp_path_factory) -> Path:
    """What the COCO data module must cope with: ``{train,val}2017/`` JPEGs at odd sizes (one grayscale per
    split) and ``annotations/instances_*.json`` whose objects are solid shapes on noise, their segmentation as
    polygons, compressed RLE and (the crowd regions, one per split) uncompressed RLE; each split has an image
    without objects. train: 6 images, 8 objects + 1 crowd; val: 4 images, 4 objects + 1 crowd."""
    import json

    from PIL import Image
    from pycocotools import mask as mask_utils

    root = tmp_path_factory.mktemp("coco_tree")
    rng = np.random.default_rng(26)
    colours = {3: (230, 40, 40), 7: (40, 230, 40), 11: (40, 40, 230)}
    # per split: (width, height, mode, [(category id, x, y, w, h, form)]) with form polygon / rle / crowd
    layouts = {
        "train2017": [(75, 61, "RGB", [(3, 5, 7, 30, 25, "polygon"), (7, 40, 20, 28, 30, "rle")]),
                      (97, 130, "RGB", [(11, 10, 10, 20, 70, "polygon"), (3, 50, 80, 35, 40, "rle")]),
                      (64, 64, "L", [(7, 12, 12, 30, 30, "polygon")]),
                      (120, 97, "RGB", [(3, 60, 10, 40, 40, "polygon"), (11, 5, 50, 60, 15, "rle"),
                                        (7, 70, 60, 45, 35, "crowd")]),
                      (50, 77, "RGB", []),
                      (88, 71, "RGB", [(11, 30, 5, 15, 60, "polygon")])],
        "val2017": [(81, 67, "RGB", [(3, 10, 10, 30, 30, "polygon"), (7, 45, 25, 30, 35, "rle")]),
                    (70, 90, "L", [(11, 20, 10, 18, 70, "polygon")]),
                    (66, 59, "RGB", []),
                    (99, 85, "RGB", [(7, 50, 40, 40, 40, "rle"), (3, 5, 50, 30, 30, "crowd")])],
    }
    (root / "annotations").mkdir()
    next_id = 1
    for split, images in layouts.items():
        (root / split).mkdir()
        document = {"images": [], "annotations": [], "categories": COCO_TREE_CATEGORIES}
        for index, (width, height, mode, objects) in enumerate(images):
            image_id = 100 * (split == "val2017") + index + 1
            pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            for category, x, y, w, h, form in objects:
                mask = np.zeros((height, width), dtype=np.uint8)
                if category == 7:  # a disc: the mask is not its box
                    yy, xx = np.mgrid[:height, :width]
                    mask[((xx - x - w / 2) / (w / 2)) ** 2 + ((yy - y - h / 2) / (h / 2)) ** 2 <= 1] = 1
                else:
                    mask[y:y + h, x:x + w] = 1
                pixels[mask.astype(bool)] = colours[category]
                rle = mask_utils.encode(np.asfortranarray(mask))
                if form == "polygon":  # the box's outline (squares, bars) or the disc's 16-gon
                    t = np.linspace(0, 2 * np.pi, 16, endpoint=False)
                    points = (np.stack([x + w / 2 + w / 2 * np.cos(t), y + h / 2 + h / 2 * np.sin(t)], 1)
                              if category == 7 else np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]]))
                    segmentation = [points.ravel().round(2).tolist()]
                elif form == "rle":
                    segmentation = {"size": [height, width], "counts": rle["counts"].decode("ascii")}
                else:  # crowd: uncompressed RLE, as COCO writes them
                    flat = mask.ravel(order="F")
                    changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
                    segmentation = {"size": [height, width], "counts": np.diff(np.concatenate([[0], changes])).tolist()}
                document["annotations"].append({
                    "id": next_id, "image_id": image_id, "category_id": category, "segmentation": segmentation,
                    "area": float(mask.sum()), "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                    "iscrowd": int(form == "crowd")})
                next_id += 1
            name = f"{split}_{index:03d}.jpg"
            Image.fromarray(pixels).convert(mode).save(root / split / name, quality=95)
            document["images"].append({"id": image_id, "file_name": name, "width": width, "height": height})
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(document))
    return root
