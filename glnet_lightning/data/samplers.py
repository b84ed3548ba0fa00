"""Repeated-augmentation sampler that Lightning leaves alone under DDP.

Why: with ``Trainer(use_distributed_sampler=True)`` (the default) Lightning
wraps every training sampler that is not a ``DistributedSampler`` in a
``DistributedSamplerWrapper``, which would shard timm's ``RepeatAugSampler`` a
second time (each rank would see 1/world_size of its already-sharded indices).
Declaring the class a ``DistributedSampler`` makes Lightning use it as is, while
iteration, length and ``set_epoch`` stay timm's.
"""
from __future__ import annotations

from torch.utils.data import Dataset, DistributedSampler
from timm.data.distributed_sampler import RepeatAugSampler

__all__ = ["RepeatAugDistributedSampler"]


class RepeatAugDistributedSampler(RepeatAugSampler, DistributedSampler):
    """timm's ``RepeatAugSampler`` (DeiT repeated augmentation) typed as a ``DistributedSampler``."""

    def __init__(
        self,
        dataset: Dataset,
        num_replicas: int,
        rank: int,
        shuffle: bool = True,
        num_repeats: int = 3,
    ) -> None:
        RepeatAugSampler.__init__(
            self, dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, num_repeats=num_repeats
        )
        # attributes DistributedSampler users may read; RepeatAugSampler seeds its shuffle with the epoch only
        self.seed = 0
        self.drop_last = False
