"""torch.distributed plumbing for data-parallel training under torchrun.

One process per device. torchrun exports ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE`` and the rendezvous
address (``MASTER_ADDR``/``MASTER_PORT``) that ``init_process_group``'s default ``env://`` reads.
NCCL moves CUDA tensors between GPUs; gloo moves CPU tensors (CPU training, and the tests).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


def is_active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_active() else 0


def rank_device() -> torch.device:
    """cuda:LOCAL_RANK under NCCL (one GPU per process), the CPU under gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def init_process_group(device: str | None) -> None:
    """NCCL for ``cuda`` (``auto`` when CUDA is there), gloo for ``cpu``; ValueError for anything else."""
    kind = device or "auto"
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind.startswith("cuda:"):
        raise ValueError("under torchrun each process uses cuda:LOCAL_RANK; pass --device cuda "
                         "(choose GPUs with CUDA_VISIBLE_DEVICES)")
    if kind == "cuda":
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK {local_rank} needs a GPU, but {torch.cuda.device_count()} are visible "
                             "(--nproc_per_node must not exceed the GPUs per node)")
        torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl", device_id=torch.device("cuda", local_rank))
    elif kind == "cpu":
        dist.init_process_group("gloo")
    else:
        raise ValueError(f"multi-process training runs on cuda (NCCL) or cpu (gloo), not {kind!r}")


def destroy_process_group(wait_for_peers: bool) -> None:
    if is_active():
        if wait_for_peers:
            # rank 0 is still writing its last checkpoint when the others finish: a rank that tears
            # down its gloo connections under a peer still using them can abort, so all leave together
            dist.barrier()
        dist.destroy_process_group()


def wrap(module: torch.nn.Module, device: torch.device) -> DistributedDataParallel:
    """DDP averages gradients across ranks during backward (and broadcasts rank 0's weights now)."""
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids)


def all_reduce_mean(values: list[float]) -> list[float]:
    """Each value averaged over the ranks; float64 so that the average itself adds no rounding of note."""
    tensor = torch.tensor(values, dtype=torch.float64, device=rank_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return (tensor / dist.get_world_size()).tolist()
