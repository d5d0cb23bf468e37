"""Which process am I? The torchrun environment, as the trainer needs to know it.

torchrun starts one process per device and tells each its place through environment variables:
``RANK`` (0..WORLD_SIZE-1 over all nodes), ``LOCAL_RANK`` (0.. on this node) and ``WORLD_SIZE``. A
plain ``minigpt train`` has none of them and is a world of one, which never imports torch.distributed.

Data-parallel semantics (what makes a 2-process run equal a 1-process run with twice the batch):
every rank draws the same global batch of ``batch_size * world_size`` rows from the same seeded
stream and trains on its own slice of ``batch_size`` rows; gradients and losses are averaged across
ranks. The sampler states are therefore identical on all ranks, rank 0 stores them in checkpoints,
and a run resumed under another world size continues the same stream (exactly the same batches when
``batch_size * world_size`` is unchanged).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from backends import load_backend
from backends.base import Backend
from minigpt_tui.errors import MiniGPTError


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    # the backend class whose process group this world is (None for a world of one)
    collectives: type[Backend] | None = field(default=None, compare=False)

    @property
    def is_writer(self) -> bool:
        """Rank 0 alone writes the run folder (config, metrics, checkpoints) and prints progress."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.size > 1

    def shard(self, batch: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """This rank's rows of a global (inputs, targets) batch of ``size * B`` rows."""
        rows = len(batch[0]) // self.size
        mine = slice(self.rank * rows, (self.rank + 1) * rows)
        return batch[0][mine], batch[1][mine]

    def mean(self, values: list[float]) -> list[float]:
        """Average each value over all ranks (a collective: every rank must call it, in the same order)."""
        if not self.is_distributed:
            return list(values)
        return self.collectives.all_reduce_mean(values)

    def any(self, flag: bool) -> bool:
        """True on every rank when it is true on at least one (a stop request must stop all ranks together)."""
        return self.mean([float(flag)])[0] > 0 if self.is_distributed else flag


SINGLE_PROCESS = World()


def world_from_env(environ: Mapping[str, str] = os.environ) -> World:
    """The torchrun variables, or a world of one when ``WORLD_SIZE`` is not set."""
    if "WORLD_SIZE" not in environ:
        return SINGLE_PROCESS
    try:
        size, rank = int(environ["WORLD_SIZE"]), int(environ.get("RANK", "0"))
        local_rank = int(environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise MiniGPTError("WORLD_SIZE, RANK and LOCAL_RANK must be integers (they are set by torchrun)") from None
    if size < 1 or not 0 <= rank < size or local_rank < 0:
        raise MiniGPTError(f"inconsistent torchrun environment: RANK={rank} WORLD_SIZE={size} LOCAL_RANK={local_rank}")
    return World(rank, size, local_rank)


def start_world(backend: str, device: str) -> World:
    """Join the backend's process group when started by torchrun with more than one process."""
    world = world_from_env()
    if not world.is_distributed:
        return world
    try:
        backend_cls = load_backend(backend)
        backend_cls.join_process_group(device)
    except (ValueError, ImportError) as exc:
        raise MiniGPTError(str(exc)) from None
    return World(world.rank, world.size, world.local_rank, backend_cls)


def stop_world(world: World, wait_for_peers: bool = True) -> None:
    """Leave the process group; after an error only this rank may have hit, do not wait for the others."""
    if world.collectives is not None:
        world.collectives.leave_process_group(wait_for_peers)
