"""Data-parallel training under `torchrun` (one process per GPU, or several CPU processes with gloo).

We average gradients by hand (one flattened all-reduce per optimiser step, as NVlabs StyleGAN3 does) instead of
wrapping nets in `DistributedDataParallel`: the GAN alternates G, D and lazy-R1 phases with parameters frozen
and unfrozen between them, which DDP's bucketed reducer handles badly (unused-parameter errors, a hook per
phase). The result is the same synchronous data parallelism: identical weights on every rank after every step.
Only rank 0 writes files.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as tdist


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str | None = None) -> DistInfo:
    """Read torchrun's env (RANK, WORLD_SIZE, LOCAL_RANK) and join the process group when WORLD_SIZE > 1.

    Backend: nccl when this process drives a CUDA device, gloo on CPU. Device: `device` if given, else
    `cuda:<local_rank>` when CUDA is available, else cpu.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    if world > 1 and not tdist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        tdist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=device)


def shutdown(info: DistInfo) -> None:
    if info.enabled and tdist.is_initialized():
        tdist.destroy_process_group()


def sync_grads(params: Iterable[torch.nn.Parameter], info: DistInfo) -> None:
    """Average gradients over ranks (one all-reduce of the flattened grads; missing grads count as zero)."""
    if not info.enabled:
        return
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params])
    tdist.all_reduce(flat)
    flat /= info.world_size
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n


def sync_buffers(module: torch.nn.Module, info: DistInfo) -> None:
    """Average float buffers (e.g. the mapping network's `w_avg`, tracked from each rank's own z)."""
    if not info.enabled:
        return
    for b in module.buffers():
        if b.is_floating_point():
            tdist.all_reduce(b)
            b /= info.world_size


def broadcast_module(module: torch.nn.Module, info: DistInfo) -> None:
    """Copy rank 0's parameters and buffers to every rank (after init or resume)."""
    if not info.enabled:
        return
    for t in list(module.parameters()) + list(module.buffers()):
        tdist.broadcast(t.data, src=0)


def mean_over_ranks(values: dict[str, float], info: DistInfo) -> dict[str, float]:
    """Average logged scalars over ranks so rank 0's log describes the whole global batch."""
    if not info.enabled or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=info.device)
    tdist.all_reduce(t)
    return {k: float(v) / info.world_size for k, v in zip(keys, t.tolist(), strict=True)}


def barrier(info: DistInfo) -> None:
    if info.enabled:
        tdist.barrier()
