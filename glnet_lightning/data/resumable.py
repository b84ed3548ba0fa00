"""Training loaders that a pre-empted run resumes exactly, and the random state that goes with them.

Why: a resumed epoch must see the rest of the same sample order with the same augmentations.
The position in the epoch is torchdata's job: :func:`resumable_loader` is a
``StatefulDataLoader``, whose ``state_dict`` (saved by Lightning in every checkpoint) holds the
sampler's position and generator, the workers' seed and, per worker, the state of its dataset
after the last batch it delivered. :class:`WorkerRandomState` makes that dataset state the
worker's random state (torch, ``random``, numpy), which every augmentation in the worker draws
from (timm's transforms, the Fashion-MNIST batch collate), so each restarted worker continues
its random stream where it stopped.

litdata's ``StreamingDataLoader`` saves its position but not its workers' random state:
:func:`sample_rng` gives the streaming dataset a random state per sample instead, derived from
(seed, epoch, sample index), so a sample's augmentation does not depend on which worker
produced it or when.

The states are tensors and plain numbers only: Lightning loads checkpoints with
``weights_only=True``.
"""
from __future__ import annotations

import contextlib
import hashlib
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info
from torchdata.stateful_dataloader import StatefulDataLoader

__all__ = ["WorkerRandomState", "resumable_loader", "get_rng_states", "set_rng_states", "sample_rng"]


def get_rng_states() -> dict[str, torch.Tensor]:
    """This process's torch (CPU and CUDA), ``random`` and numpy random states, as tensors."""
    version, words, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state()
    states = {
        "torch": torch.get_rng_state(),
        "python": torch.tensor([version, *words], dtype=torch.int64),
        "python_gauss": torch.tensor([gauss is not None, gauss or 0.0], dtype=torch.float64),
        "numpy": torch.from_numpy(np.concatenate([keys.astype(np.int64), [pos, has_gauss]])),
        "numpy_gauss": torch.tensor([cached], dtype=torch.float64),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    return states


def set_rng_states(states: dict[str, torch.Tensor]) -> None:
    """Inverse of :func:`get_rng_states`."""
    torch.set_rng_state(states["torch"].to(torch.uint8))
    python = [int(v) for v in states["python"].tolist()]
    has_gauss, gauss = states["python_gauss"].tolist()
    random.setstate((python[0], tuple(python[1:]), gauss if has_gauss else None))
    numpy = states["numpy"].numpy()
    np.random.set_state(("MT19937", numpy[:-2].astype(np.uint32), int(numpy[-2]), int(numpy[-1]),
                         float(states["numpy_gauss"][0])))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(states["cuda"].to(torch.uint8)))


@contextlib.contextmanager
def sample_rng(*key: int) -> Iterator[None]:
    """Run the block with the process's random generators seeded from ``key``, then put them back."""
    seed = int.from_bytes(hashlib.blake2b(repr(key).encode(), digest_size=8).digest(), "little") >> 1
    saved = get_rng_states()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        set_rng_states(saved)


class WorkerRandomState(Dataset):
    """``dataset`` as is, plus a ``state_dict`` that is the DataLoader worker's random state.

    torchdata's ``StatefulDataLoader`` snapshots it in each worker after every batch and puts it
    back into the restarted worker on resume. In the main process (``num_workers=0``) the state is
    empty: there the random state is the training process's own, which the checkpoint keeps
    (:class:`~glnet_lightning.lit.exact_resume.ExactResume`).
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        return self.dataset[index]

    def state_dict(self) -> dict[str, Any]:
        return {"rng": get_rng_states()} if get_worker_info() is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("rng") is not None and get_worker_info() is not None:
            set_rng_states(state["rng"])


def resumable_loader(dataset: Dataset, **kwargs: Any) -> StatefulDataLoader:
    """A ``StatefulDataLoader`` over ``dataset`` (DataLoader arguments) whose workers' random state is saved."""
    return StatefulDataLoader(WorkerRandomState(dataset), **kwargs)
