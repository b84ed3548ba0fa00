"""litdata shards of an ImageNet-style folder tree: writing them and streaming from them.

Why: a folder of 1.28 M small JPEGs on network storage spends its time on per-file
open/stat round trips, not on reading bytes. ``glnet data prepare`` packs the files
into ~64 MB litdata chunks (a local directory or an object-store URL such as
``s3://bucket/imagenet``) that :class:`StreamingImageDataset` reads sequentially.

Layout written under the output location::

    train/  val/   one litdata dataset per split; one sample per image file:
                   {"image": the file's encoded bytes, "label": class index,
                    "path": the path relative to the split folder (bytes)}
    meta/          one sample {"meta": JSON bytes}: the class list in label order
                   (the folder path's order) and, per split, the number of samples
                   and the unreadable files left out

The encoded file is stored as is (not decoded pixels), so the shards are about
the size of the JPEGs and decoding stays in the DataLoader workers, where the
folder path does it too. Every file is fully decoded once while writing, so the
``on_bad_image`` policy ("skip" and count, or "raise" naming the file) is applied
then, with the same decoder the folder path uses; the streaming reader does not
meet unreadable files again.

litdata is an optional dependency: importing this module without it raises an
``ImportError`` that says how to install it.
"""
from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from .image_dataset import BAD_IMAGE_POLICIES, UnreadableImageError, decode_rgb
from .image_folder import SampleList
from .resumable import sample_rng

INSTALL_HINT = "pip install glnet-lightning[streaming]"


class MissingLitdataError(ImportError, ValueError):
    """litdata is not installed. Also a ``ValueError``: the configuration asks for what is missing,
    so ``glnet fit`` reports it as one error line rather than a traceback."""


try:
    import litdata
except ImportError as exc:  # exercised by hiding the module in a test
    raise MissingLitdataError(f"streaming from litdata shards needs the litdata package: {INSTALL_HINT}") from exc

__all__ = [
    "INSTALL_HINT",
    "MissingLitdataError",
    "StreamingImageDataset",
    "SplitReport",
    "decode_rgb",
    "join_location",
    "read_meta",
    "write_meta",
    "write_split",
]

META = "meta"
MAX_LISTED_BAD = 100  # names of unreadable files kept in meta; the count is always exact


def is_url(location: str) -> bool:
    return "://" in location


def join_location(base: str, *parts: str) -> str:
    """``base/part/...`` for both local directories and object-store URLs (no ``os.path`` on URLs)."""
    if not is_url(base):
        base = os.path.abspath(os.path.expanduser(base))
    return "/".join([base.rstrip("/"), *parts])


# -- writing -----------------------------------------------------------------------------------------
@dataclass
class SplitReport:
    """What :func:`write_split` wrote: sample count and the unreadable files left out."""

    split: str
    location: str
    num_samples: int
    bad_images: list[str] = field(default_factory=list)


class _EncodeSample:
    """``optimize`` function: sample index -> shard sample, applying the bad-image policy.

    A plain class (not a closure) so litdata can pickle it into spawned worker
    processes. Unreadable files are appended to a local side file per process
    and thread, because the workers cannot return anything but samples.

    "raise" does not raise here: when a worker fails, litdata kills its workers
    but leaves their helper processes blocked forever. Instead a stop file makes
    every later call return at once, and :func:`write_split` raises afterwards.
    """

    def __init__(self, samples: SampleList, on_bad_image: str, bad_dir: str) -> None:
        self.samples = samples
        self.on_bad_image = on_bad_image
        self.bad_dir = bad_dir
        self.stop_file = os.path.join(bad_dir, "stop")

    def __call__(self, index: int) -> dict[str, Any] | None:
        if self.on_bad_image == "raise" and os.path.exists(self.stop_file):
            return None
        path, label = self.samples[index]
        try:
            with open(path, "rb") as handle:
                data = handle.read()
            decode_rgb(data, path)
        except OSError as exc:  # UnreadableImageError is an OSError, so are open/read failures
            message = str(exc) if isinstance(exc, UnreadableImageError) else f"cannot read image file {path}: {exc}"
            side_file = os.path.join(self.bad_dir, f"{os.getpid()}-{threading.get_ident()}.jsonl")
            with open(side_file, "a", encoding="utf-8") as handle:
                handle.write(json.dumps({"path": path, "error": message}) + "\n")
            if self.on_bad_image == "raise":
                Path(self.stop_file).touch()
                return None
            print(f"skipping unreadable image: {message}", flush=True)
            return None
        return {"image": data, "label": int(label), "path": bytes(self.samples.paths[index])}


@contextlib.contextmanager
def _fork_workers() -> Iterator[str | None]:
    """The start method for litdata's workers; the process-wide default is restored afterwards.

    Why: litdata defaults to "spawn", which re-imports torch/Lightning in every
    worker (seconds each) and, as it sets the start method process-wide, would
    also switch later DataLoader workers to spawn. Forking is safe here: the
    workers only read files and run PIL. Other platforms keep litdata's choice.
    """
    previous = multiprocessing.get_start_method(allow_none=True)
    try:
        yield "fork" if sys.platform.startswith("linux") else None
    finally:
        multiprocessing.set_start_method(previous, force=True)


def _optimize(**kwargs: Any) -> None:
    with _fork_workers() as start_method:
        litdata.optimize(start_method=start_method, **kwargs)


def _read_bad(bad_dir: str) -> list[dict[str, str]]:
    records = []
    for name in sorted(n for n in os.listdir(bad_dir) if n.endswith(".jsonl")):
        with open(os.path.join(bad_dir, name), encoding="utf-8") as handle:
            records.extend(json.loads(line) for line in handle if line.strip())
    return sorted(records, key=lambda r: r["path"])


def write_split(
    samples: SampleList,
    split: str,
    output: str,
    on_bad_image: str = "skip",
    num_workers: int = 1,
    chunk_bytes: int = 64_000_000,
    overwrite: bool = False,
    verbose: bool = True,
) -> SplitReport:
    """Write one split's files into ``output/<split>`` as litdata chunks, in folder order.

    Raises :class:`UnreadableImageError` naming the file if ``on_bad_image="raise"``
    and a file cannot be decoded.
    """
    if on_bad_image not in BAD_IMAGE_POLICIES:
        raise ValueError(f"on_bad_image must be one of {BAD_IMAGE_POLICIES}, got {on_bad_image!r}")
    location = join_location(output, split)
    bad_dir = tempfile.mkdtemp(prefix="glnet-prepare-")
    try:
        _optimize(
            fn=_EncodeSample(samples, on_bad_image, bad_dir),
            inputs=list(range(len(samples))),
            output_dir=location,
            chunk_bytes=chunk_bytes,
            num_workers=max(1, min(num_workers, len(samples))),
            keep_data_ordered=True,  # each worker takes a contiguous slice: shards keep the folder order
            reorder_files=False,
            mode="overwrite" if overwrite else None,
            verbose=verbose,
        )
        bad = _read_bad(bad_dir)
    finally:
        shutil.rmtree(bad_dir, ignore_errors=True)
    if on_bad_image == "raise" and bad:
        if not is_url(location):  # the split stopped half-way: do not leave a usable-looking index behind
            Path(location, "index.json").unlink(missing_ok=True)
        raise UnreadableImageError(bad[0]["error"])
    report = SplitReport(split, location, len(samples) - len(bad), [r["path"] for r in bad])
    written = len(litdata.StreamingDataset(location)) if report.num_samples else 0
    if written != report.num_samples:  # litdata finishes "successfully" with an empty index if its workers die
        raise RuntimeError(
            f"litdata wrote {written} sample(s) to {location}, expected {report.num_samples}; "
            "its worker processes may have failed (see the messages above)"
        )
    return report


def _meta_sample(payload: bytes) -> dict[str, bytes]:
    return {"meta": payload}


def write_meta(
    output: str, classes: list[str], reports: list[SplitReport], kept: dict[str, Any] | None = None
) -> str:
    """Write ``output/meta``: the class list and the split reports, as a one-sample litdata dataset.

    Why a litdata dataset rather than a JSON file: it goes wherever the shards go
    (local directory or any URL litdata writes to) through the same public API.
    ``kept`` carries entries of splits written earlier (same classes) over.
    An existing meta is replaced: the splits it describes were just rewritten.
    """
    splits = dict(kept or {})
    for r in reports:
        splits[r.split] = {
            "num_samples": r.num_samples,
            "num_bad_images": len(r.bad_images),
            "bad_images": r.bad_images[:MAX_LISTED_BAD],
        }
    meta = {"format": 1, "classes": list(classes), "splits": splits}
    location = join_location(output, META)
    payload = json.dumps(meta).encode("utf-8")
    _optimize(
        fn=_meta_sample,
        inputs=[payload],
        output_dir=location,
        chunk_bytes=max(1_000_000, 2 * len(payload)),
        num_workers=1,
        mode="overwrite",
        verbose=False,
    )
    return location


# -- reading -----------------------------------------------------------------------------------------
def read_meta(location: str) -> dict[str, Any]:
    """The class list and split reports written by :func:`write_meta` under ``location``."""
    meta_dir = join_location(location, META)
    if not is_url(location):
        if not Path(location).expanduser().is_dir():
            raise FileNotFoundError(
                f"streaming location {location} does not exist (write it with 'glnet data prepare')"
            )
        if not (Path(meta_dir) / "index.json").is_file():
            raise FileNotFoundError(
                f"{location} holds no shards written by 'glnet data prepare': {meta_dir}/index.json is missing"
            )
    try:
        payload = litdata.StreamingDataset(meta_dir)[0]["meta"]
    except Exception as exc:  # litdata's errors for a missing remote index vary by provider
        raise FileNotFoundError(
            f"cannot read {meta_dir} (written by 'glnet data prepare'): {type(exc).__name__}: {exc}"
        ) from exc
    return json.loads(bytes(payload))


class StreamingImageDataset(litdata.StreamingDataset):
    """Shard samples -> ``(transform(RGB image), class index)``, like ``ImageFolderDataset`` for folders.

    litdata splits the stream between DDP ranks and DataLoader workers itself and
    shuffles chunk by chunk (``shuffle=True``). ``num_bad_images`` / ``bad_images``
    report the files left out when the shards were written.
    """

    def __init__(
        self,
        location: str,
        image_transform: Callable[[Image.Image], Any] | None = None,
        shuffle: bool = False,
        drop_last: bool | None = None,
        bad_images: list[str] | None = None,
        num_bad_images: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(location, shuffle=shuffle, drop_last=drop_last, **kwargs)
        # not called `transform`: StreamingDataset applies an attribute of that name to the raw sample dict
        self.image_transform = image_transform
        self.location = location
        self.bad_images = list(bad_images or [])
        self.num_bad_images = int(num_bad_images)

    def __getitem__(self, index: Any) -> tuple[Any, int]:
        sample = super().__getitem__(index)
        image = decode_rgb(bytes(sample["image"]), f"{os.fsdecode(bytes(sample['path']))} in {self.location}")
        if self.image_transform is not None:
            # litdata does not save its workers' random state: each sample's augmentation is drawn
            # from its own (seed, epoch, index), so a resumed epoch augments as the first run did
            with sample_rng(self.seed, self.current_epoch, int(getattr(index, "index", index))):
                image = self.image_transform(image)
        return image, int(sample["label"])
