"""The training order, drawn per epoch from a seed and able to start mid-epoch: a run stopped inside an epoch
(SIGTERM, a preemption) resumes on the samples, in the order and with the augmentations that the run it continues
would have used.

Written here rather than taken from PyTorch or Lightning: `RandomSampler` and `DistributedSampler` always start an
epoch from its beginning; Lightning resumes mid-epoch only from loaders that keep a state of their own (torchdata's
`StatefulDataLoader`, not a dependency here). Each sample also carries a seed for its augmentation, drawn with the
order, so what a sample looks like depends on neither the loader worker that decodes it nor the samples skipped.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset, DistributedSampler


class EpochSampler(DistributedSampler):
    """Each rank's share of a shuffled (or, with `weights`, class-balanced: drawn with replacement) order of
    `dataset`, the same for a given `seed` and epoch on every run and rank; `start_at=(epoch, n)` skips this rank's
    first `n` samples of that epoch once. A `DistributedSampler`, so Lightning keeps it under DDP and sets its epoch.

    Args:
        with_seeds: yield `(index, seed)` pairs, for datasets whose random transform takes its seed from the pair.
    """

    def __init__(
        self,
        dataset: Dataset,
        seed: int,
        num_replicas: int = 1,
        rank: int = 0,
        weights: Sequence[float] | None = None,
        with_seeds: bool = False,
        start_at: tuple[int, int] | None = None,
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.weights = torch.as_tensor(weights, dtype=torch.double) if weights is not None else None
        self.with_seeds = with_seeds
        self.start_at = start_at

    def __iter__(self) -> Iterator[Any]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        size = len(self.dataset)  # type: ignore[arg-type]
        if self.weights is not None:
            order = torch.multinomial(self.weights, size, replacement=True, generator=generator)
        else:
            order = torch.randperm(size, generator=generator)
        seeds = torch.randint(2**31 - 1, (size,), generator=generator)
        repeats = -(-self.total_size // size)  # every rank gets as many samples: pad by repeating, as PyTorch does
        order, seeds = order.repeat(repeats)[: self.total_size], seeds.repeat(repeats)[: self.total_size]
        mine = slice(self.rank, self.total_size, self.num_replicas)
        pairs = list(zip(order[mine].tolist(), seeds[mine].tolist(), strict=True))
        skip = 0
        if self.start_at is not None and self.start_at[0] == self.epoch:
            skip, self.start_at = self.start_at[1], None
        for index, seed in pairs[skip:]:
            yield (index, seed) if self.with_seeds else index
