"""DeepSpeed-Ulysses sequence parallelism (Jacobs et al. 2023, arXiv 2309.14509) for the DiT's self-attention.

Every rank holds a shard of the tokens with all heads; around attention one all-to-all turns that into all the
tokens with ``H / P`` heads, the attention runs as in one process (the same ``AttentionGroup`` plans: masks,
gathered window keys, window-relative RoPE), and a second all-to-all turns the output back. Everything else in a
block is per token (adaLN, qk-norm, MLP) or per frame (the windowed cross-attention) and runs on the shard as is.

Token shards: a forward's sequence is ``[references (R) | video (F frames x N tokens)]``. Each frame's N tokens
(and the R references) are split into P contiguous runs of ``ceil(N / P)`` (``ceil(R / P)``), zero-padded at the
end, so every rank holds every frame (the cross-attention needs nothing from other ranks) and the same number of
tokens. After the all-to-all a rank holds rank ``s``'s local sequence at ``s * L .. (s + 1) * L``; ``order`` maps
the canonical token ``i`` to its place there, and padding never reaches attention.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from lpm.parallel.group import SequenceGroup, all_gather, all_to_all


@dataclass(frozen=True)
class TokenShards:
    """How ``[references (R) | video (F x N)]`` splits over P ranks (see the module docstring)."""

    world_size: int  # P
    ref_tokens: int  # R
    frames: int  # F
    frame_tokens: int  # N

    @property
    def ref_local(self) -> int:
        return math.ceil(self.ref_tokens / self.world_size)

    @property
    def frame_local(self) -> int:
        return math.ceil(self.frame_tokens / self.world_size)

    @property
    def local_length(self) -> int:
        """L: tokens of one rank's local sequence (padding included)."""
        return self.ref_local + self.frames * self.frame_local

    def order(self) -> torch.Tensor:
        """``(R + F * N,)`` position of each canonical token in the gathered ``(P * L)`` sequence."""
        r, rl, nl, length = self.ref_tokens, self.ref_local, self.frame_local, self.local_length
        refs = torch.arange(r)
        ref_pos = (refs // rl) * length + refs % rl if r else refs
        i = torch.arange(self.frame_tokens)
        f = torch.arange(self.frames)[:, None]
        video_pos = (i // nl) * length + rl + f * nl + i % nl  # (F, N)
        return torch.cat([ref_pos, video_pos.reshape(-1)])

    def shard_video(self, x: torch.Tensor, rank: int) -> torch.Tensor:
        """``(B, F, N, ...) -> (B, F, ceil(N/P), ...)``: this rank's run of every frame, zero-padded."""
        nl = self.frame_local
        part = x[:, :, rank * nl:(rank + 1) * nl]
        return _pad(part, 2, nl)

    def shard_refs(self, x: torch.Tensor, rank: int) -> torch.Tensor:
        """``(B, R, D) -> (B, ceil(R/P), D)``."""
        rl = self.ref_local
        return _pad(x[:, rank * rl:(rank + 1) * rl], 1, rl)

    def gather_video(self, x: torch.Tensor, group: SequenceGroup, communicator: Any) -> torch.Tensor:
        """Every rank's ``(B, F, ceil(N/P), C)`` -> the whole ``(B, F, N, C)`` on every rank."""
        parts = all_gather(x, group, communicator)  # (P, B, F, n, C)
        whole = torch.cat(list(parts), dim=2)  # (B, F, P * n, C)
        return whole[:, :, :self.frame_tokens]


def _pad(x: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    missing = size - x.shape[dim]
    if missing == 0:
        return x
    shape = list(x.shape)
    shape[dim] = missing
    return torch.cat([x, x.new_zeros(shape)], dim=dim)


class UlyssesExchange:
    """The two all-to-alls around attention for one forward's token shards.

    Args:
        group: the sequence-parallel group.
        communicator: the stage's process group (``group.stream`` or ``group.refine``).
        shards: the forward's token layout.
    """

    def __init__(self, group: SequenceGroup, communicator: Any, shards: TokenShards, device=None) -> None:
        self.group, self.communicator, self.shards = group, communicator, shards
        self.order = shards.order().to(device)  # once per forward, not per block

    def to_heads(self, *xs: torch.Tensor) -> list[torch.Tensor]:
        """Local tokens, all heads -> all tokens (canonical order), this rank's heads; one all-to-all for all.

        Args:
            xs: each ``(B, H, L, d)`` (q, k, v of the local sequence).
        Returns:
            each ``(B, H / P, R + F * N, d)``.
        """
        p = self.group.world_size
        b, h, length, d = xs[0].shape
        stacked = torch.stack(xs)  # (X, B, H, L, d)
        pieces = stacked.reshape(len(xs), b, p, h // p, length, d).permute(2, 0, 1, 3, 4, 5)  # (P, X, B, H/P, L, d)
        got = all_to_all(pieces, self.group, self.communicator)  # [s]: rank s's tokens, this rank's heads
        gathered = got.permute(1, 2, 3, 0, 4, 5).reshape(len(xs), b, h // p, p * length, d)  # (X, B, H/P, P*L, d)
        return list(gathered.index_select(3, self.order).unbind(0))

    def to_tokens(self, o: torch.Tensor) -> torch.Tensor:
        """``(B, H / P, R + F * N, d)`` -> ``(B, H, L, d)``: the inverse of ``to_heads`` (padding gets zeros)."""
        p, length = self.group.world_size, self.shards.local_length
        b, hp, _, d = o.shape
        gathered = o.new_zeros(b, hp, p * length, d)
        gathered.index_copy_(2, self.order, o)
        pieces = gathered.reshape(b, hp, p, length, d).permute(2, 0, 1, 3, 4)  # (P, B, H/P, L, d)
        got = all_to_all(pieces, self.group, self.communicator)  # [g]: head group g of this rank's tokens
        return got.permute(1, 0, 2, 3, 4).reshape(b, p * hp, length, d)
