"""``SequenceGroup``: the ranks that split one forward's tokens, and the two collectives sequence parallelism needs.

A streaming engine runs the generator (cached forwards) and the refiner (uncached forwards) in different threads
(``lpm.runtime.pipeline``), so on each rank the two stages' collectives may interleave in any order. Each stage
therefore talks over its own communicator (``stream`` and ``refine``): within one stage every rank issues its
collectives in the same order, and the two stages never share a communicator. A world of one never touches
``torch.distributed`` (every collective is the identity), so the same code runs single-process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from lpm.errors import LpmError


@dataclass(frozen=True)
class SequenceGroup:
    """This rank's place in the sequence-parallel group and its communicators.

    Attributes:
        rank: index in the group (0 .. world_size - 1); rank 0 writes outputs.
        world_size: P, processes splitting each forward's tokens.
        stream: communicator of cached forwards (the generator and the reference prefill), or None for P = 1.
        refine: communicator of uncached forwards (the refiner, a Base forward), or None for P = 1.
        control: a gloo communicator for rank 0's announcements to the others (``lpm.runtime.follow``).
    """

    rank: int = 0
    world_size: int = 1
    stream: Any = None
    refine: Any = None
    control: Any = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def check_heads(self, num_heads: int) -> None:
        """Ulysses splits heads over ranks: ``num_heads`` must divide by P (lpm-17b's 40: P in 1, 2, 4, 5, 8)."""
        if num_heads % self.world_size:
            divisors = [p for p in range(1, num_heads + 1) if num_heads % p == 0]
            raise LpmError(f"sequence parallelism over {self.world_size} processes needs num_heads divisible by "
                           f"{self.world_size}; the model has {num_heads} heads (use {divisors} processes)")


def init_sequence_group(device: str = "cpu") -> SequenceGroup:
    """The group of a torchrun job (``WORLD_SIZE`` > 1; gloo on CPU, NCCL on CUDA), or a world of one.

    Every rank must call it (creating communicators is itself collective).
    """
    from lpm.training.distributed import init_distributed

    info = init_distributed(device)
    if not info.distributed:
        return SequenceGroup()
    stream, refine, control = dist.new_group(), dist.new_group(), dist.new_group(backend="gloo")
    return SequenceGroup(info.rank, info.world_size, stream, refine, control)


def all_to_all(pieces: torch.Tensor, group: SequenceGroup, communicator: Any) -> torch.Tensor:
    """Exchange pieces: ``pieces[i]`` goes to rank ``i``; returns ``out`` with ``out[j]`` from rank ``j``.

    Args:
        pieces: ``(P, ...)``.
    Returns:
        ``(P, ...)``, same shape and dtype.
    """
    if group.world_size == 1:
        return pieces
    pieces = pieces.contiguous()
    out = torch.empty_like(pieces)
    dist.all_to_all_single(out, pieces, group=communicator)
    return out


def all_gather(x: torch.Tensor, group: SequenceGroup, communicator: Any) -> torch.Tensor:
    """Every rank's ``x`` stacked: ``(...) -> (P, ...)`` (rank order)."""
    if group.world_size == 1:
        return x[None]
    x = x.contiguous()
    parts = [torch.empty_like(x) for _ in range(group.world_size)]
    dist.all_gather(parts, x, group=communicator)
    return torch.stack(parts)
