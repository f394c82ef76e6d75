"""Data across devices: the global batch split per device, loader workers per device, and evaluation that counts each
sample once."""

from __future__ import annotations

from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import Dataset

from tl_lightning.utils import BadValue, usable_cpus


def per_device_batch_size(batch_size: int, world_size: int) -> int:
    """`batch_size` is the global batch, whatever the number of devices, so a recipe means the same on 1 or 8.

    Raises:
        ValueError: it does not divide evenly between the devices.
    """
    if batch_size % world_size:
        lower, upper = batch_size - batch_size % world_size, batch_size + world_size - batch_size % world_size
        raise BadValue(
            f"data.batch_size={batch_size} is the global batch and must divide evenly between the {world_size} "
            f"devices; use e.g. data.batch_size={lower or upper} or {upper}."
        )
    return batch_size // world_size


def eval_sampler(dataset: Dataset, world_size: int, rank: int) -> UnrepeatedDistributedSampler | None:
    """A sampler that gives each rank a disjoint share of `dataset` with no padding, or None on one device.

    PyTorch's `DistributedSampler` (which Lightning inserts by default) pads the dataset to a multiple of the
    world size by repeating samples, so validation and test metrics would count some images twice. torchmetrics
    sums the per-rank states, so with this sampler every image is counted exactly once.
    """
    if world_size < 2:
        return None
    return UnrepeatedDistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=False)


def world(trainer: object | None) -> tuple[int, int]:
    """The world size and global rank of `trainer`, (1, 0) without one."""
    if trainer is None:
        return 1, 0
    return int(getattr(trainer, "world_size", 1)), int(getattr(trainer, "global_rank", 0))


# Past this many loader processes per device, more only cost memory and start-up time for image folders.
MAX_AUTO_WORKERS = 8


def auto_num_workers(devices: int, cpus: int | None = None) -> int:
    """Loader worker processes per device: the usable CPUs shared between `devices`, one left for the process that
    trains, at most `MAX_AUTO_WORKERS`.

    >>> auto_num_workers(devices=1, cpus=16), auto_num_workers(devices=4, cpus=16), auto_num_workers(1, cpus=1)
    (8, 3, 0)
    """
    per_device = (cpus if cpus is not None else usable_cpus()) // max(1, devices)
    return max(0, min(MAX_AUTO_WORKERS, per_device - 1))
