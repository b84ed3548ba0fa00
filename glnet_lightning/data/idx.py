"""A tiny reader for IDX files (the MNIST / Fashion-MNIST container format).

Why our own reader: the Debian ``dataset-fashion-mnist`` package ships bare
``*.gz`` files that do not follow torchvision's ``FashionMNIST/raw`` layout,
and a damaged download should fail with a message that names the file and
says what is wrong instead of a numpy reshape error deep inside a loader.

Format (big-endian): two zero bytes, a dtype code, the number of dimensions,
one uint32 per dimension, then the raw array data.
"""
from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

__all__ = ["read_idx", "IDX_DTYPES"]

#: IDX dtype code -> numpy dtype (multi-byte types are big-endian on disk).
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: Path) -> bytes:
    """Return the (decompressed) file content; gzip is detected by its magic, not the suffix."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"IDX file not found: {path}") from None
    if not raw.startswith(_GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except EOFError as exc:
        raise ValueError(f"IDX file {path} is truncated: the gzip stream ends early ({exc})") from exc
    except (OSError, zlib.error) as exc:
        raise ValueError(f"IDX file {path} is corrupt: cannot decompress gzip data ({exc})") from exc


def read_idx(path: str | Path, expected_ndim: int | None = None) -> np.ndarray:
    """Read an IDX (optionally gzipped) file into a numpy array in native byte order.

    Raises ``FileNotFoundError`` if the file is missing and ``ValueError`` naming the
    file for a bad magic number, an unexpected number of dimensions, or a data
    section that is shorter (truncated) or longer than the header announces.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise ValueError(f"IDX file {path} is truncated: only {len(data)} bytes, no complete header")
    if data[0] != 0 or data[1] != 0 or data[2] not in IDX_DTYPES:
        raise ValueError(
            f"IDX file {path} has a bad magic number {data[:4].hex()} "
            "(expected 0000 followed by a dtype code and the number of dimensions); "
            "it is not an IDX file or it is corrupt"
        )
    dtype = IDX_DTYPES[data[2]]
    ndim = data[3]
    if expected_ndim is not None and ndim != expected_ndim:
        raise ValueError(f"IDX file {path} has {ndim} dimensions, expected {expected_ndim}")
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise ValueError(f"IDX file {path} is truncated inside its header ({len(data)} < {header_size} bytes)")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    found = len(data) - header_size
    if found < expected:
        raise ValueError(
            f"IDX file {path} is truncated: header announces shape {shape} ({expected} data bytes) "
            f"but only {found} bytes follow"
        )
    if found > expected:
        raise ValueError(
            f"IDX file {path} is corrupt: {found - expected} unexpected bytes after the {expected} data bytes "
            f"announced for shape {shape}"
        )
    array = np.frombuffer(data, dtype=dtype, count=expected // dtype.itemsize, offset=header_size)
    return array.reshape(shape).astype(dtype.newbyteorder("="), copy=False)
