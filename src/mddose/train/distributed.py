"""DDP helpers (torchrun) and the resumable, rank-sharded batch sampler."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator

import torch
from torch.utils.data import Sampler

from mddose.errors import MddoseError
from mddose.utils.device import pick_device


@dataclass
class DistInfo:
    """rank / world size / local rank of this process; ``enabled`` when a process group was created here."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    enabled: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_pref: str = "auto") -> DistInfo:
    """Join the torchrun process group when ``WORLD_SIZE > 1`` (gloo on CPU, nccl on CUDA)."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_pref, local, what="device")
    if world <= 1:
        return DistInfo(device=device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    enabled = False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world)
        enabled = True
    return DistInfo(rank=rank, world=world, local_rank=local, device=device, enabled=enabled)


def cleanup_distributed(info: DistInfo) -> None:
    import torch.distributed as dist
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_mean(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean of ``x`` over ranks (identity with one process)."""
    if info.world <= 1:
        return x
    import torch.distributed as dist
    x = x.clone()
    dist.all_reduce(x)
    return x / info.world


def barrier(info: DistInfo) -> None:
    if info.world > 1:
        import torch.distributed as dist
        dist.barrier()


class EpochBatchSampler(Sampler[list[int]]):
    """Batches of one epoch: a permutation seeded by ``(seed, epoch)``, cut into global batches of
    ``batch_size``; rank ``r`` of ``world`` gets rows ``[r*b, (r+1)*b)`` of each (``b = batch_size /
    world``), so the union over ranks is the single-process batch. ``start`` skips the first global
    batches (exact mid-epoch resume). The last incomplete batch is dropped unless the dataset is
    smaller than one batch (then one batch of everything, which must split evenly over ranks).

    Plays the role of ``DistributedSampler`` but is resumable and equal to the 1-process order.
    """

    def __init__(self, n: int, batch_size: int, seed: int, epoch: int, start: int = 0, rank: int = 0,
                 world: int = 1):
        if batch_size % world:
            raise MddoseError(f"batch_size {batch_size} must be divisible by the number of processes {world}")
        self.n, self.seed, self.epoch, self.start, self.rank, self.world = n, seed, epoch, start, rank, world
        self.batch = batch_size if n >= batch_size else (n // world) * world
        if self.batch < world:
            raise MddoseError(f"dataset has {n} slices, fewer than the {world} processes")

    @staticmethod
    def steps_per_epoch(n: int, batch_size: int) -> int:
        return max(n // batch_size, 1)

    def __len__(self) -> int:
        return max(self.steps_per_epoch(self.n, self.batch) - self.start, 0)

    def __iter__(self) -> Iterator[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        perm = torch.randperm(self.n, generator=g).tolist()
        b = self.batch // self.world
        for k in range(self.start, self.steps_per_epoch(self.n, self.batch)):
            glob = perm[k * self.batch:(k + 1) * self.batch]
            yield glob[self.rank * b:(self.rank + 1) * b]
