"""``KVCache``: the Online model's streaming state: reference entries, ``S`` sink chunks, a rolling window.

Layout (per layer, keys stored *before* RoPE, after the qk-norm):
- ``ref_k / ref_v``: ``(B, H, R, d)`` for the session's references, computed once
  (``DiT.prefill``), never evicted.
- ``slot_k / slot_v``: ``(B, H, (S + W) * Nc, d)``, preallocated. Slots ``0..S-1`` hold the sink chunks,
  slots ``S..S+W-1`` are a ring over the rolling window: chunk ``c >= S`` lives in slot
  ``S + (c - S) mod W`` and overwrites the chunk that just left the window. Nothing is ever concatenated, so
  memory and time per chunk are constant in session length.

Which chunks a new chunk sees and at which rotary positions comes from
``lpm.models.attention.online_chunk_positions``, the same function behind the uncached Online mask, so the
cached and uncached paths cannot drift apart. Sizes all derive from ``DiTConfig`` (CausVid / Self-Forcing keep
a list of dicts with hard-coded token counts; this is the typed version).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from lpm.models.attention import online_chunk_positions
from lpm.models.dit_config import DiTConfig

if TYPE_CHECKING:
    from lpm.models.conditioning import References


@dataclass
class KVCache:
    """Per-layer keys/values of references, sink chunks and the rolling window (``KVCache.empty``)."""

    frames_per_chunk: int  # Fc, from DiTConfig
    tokens_per_chunk: int  # Nc = tokens_per_frame * Fc
    sink_chunks: int  # S
    window_chunks: int  # W
    slot_k: list[torch.Tensor]  # per layer (B, H, (S+W)*Nc, d), keys before RoPE
    slot_v: list[torch.Tensor]  # per layer (B, H, (S+W)*Nc, d)
    slot_chunk: list[int]  # chunk index held by each of the S+W slots, -1 while empty
    ref_k: list[torch.Tensor] = field(default_factory=list)  # per layer (B, H, R, d), empty until prefilled
    ref_v: list[torch.Tensor] = field(default_factory=list)
    ref_positions: torch.Tensor | None = None  # (R, 3) rotary positions of the reference tokens
    chunks_seen: int = 0  # chunks committed so far; the next forward generates chunk ``chunks_seen``
    reference_input: torch.Tensor | None = None  # (B, N, D) the global reference's tokens (``reference_concat``)
    reference_latent: torch.Tensor | None = None  # (B, C, h, w) the global reference (``reference_residual``)
    canvas: References | None = None  # the global reference and the exemplars ``expression_canvas`` draws on
    max_time_position: float = float("-inf")  # largest rotary time any cached forward used (a statistic)

    @classmethod
    def empty(
        cls,
        cfg: DiTConfig,
        batch_size: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> KVCache:
        """A cache for ``cfg`` with preallocated chunk slots; references are filled by ``DiT.prefill``."""
        slots = cfg.sink_chunks + cfg.window_chunks
        shape = (batch_size, cfg.num_heads, slots * cfg.tokens_per_chunk, cfg.head_dim)
        return cls(
            frames_per_chunk=cfg.frames_per_chunk,
            tokens_per_chunk=cfg.tokens_per_chunk,
            sink_chunks=cfg.sink_chunks,
            window_chunks=cfg.window_chunks,
            slot_k=[torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.num_blocks)],
            slot_v=[torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.num_blocks)],
            slot_chunk=[-1] * slots,
        )

    @property
    def num_layers(self) -> int:
        return len(self.slot_k)

    @property
    def is_prefilled(self) -> bool:
        return len(self.ref_k) == self.num_layers

    @property
    def reference_tokens(self) -> int:
        return 0 if not self.ref_k else self.ref_k[0].shape[2]

    def slot_of(self, chunk: int) -> int:
        """Slot a chunk is stored in: its own for sinks, the ring ``S + (c - S) mod W`` otherwise."""
        if chunk < self.sink_chunks:
            return chunk
        return self.sink_chunks + (chunk - self.sink_chunks) % self.window_chunks

    def context(self, chunk: int | None = None) -> tuple[int, list[int], int]:
        """What chunk ``chunk`` (default: the next one) attends to among cached chunks.

        Returns:
            ``(num_slots, slot_positions, query_position)``: the visible chunks are exactly slots
            ``0..num_slots-1`` (the ring fills in order and holds the window), ``slot_positions[s]`` is the
            rotary chunk position of slot ``s``, ``query_position`` that of the new chunk.
        """
        chunk = self.chunks_seen if chunk is None else chunk
        key_chunks, key_positions, query_position = online_chunk_positions(
            chunk, self.sink_chunks, self.window_chunks
        )
        by_slot = dict(zip((self.slot_of(j) for j in key_chunks), zip(key_chunks, key_positions)))
        if sorted(by_slot) != list(range(len(by_slot))):
            raise RuntimeError(f"cache slots {sorted(by_slot)} are not a prefix; bookkeeping is broken")
        for slot, (j, _) in by_slot.items():
            if self.slot_chunk[slot] != j:
                raise RuntimeError(
                    f"chunk {chunk} needs chunk {j} in slot {slot}, which holds "
                    f"{self.slot_chunk[slot]}: chunks must be committed in order"
                )
        return len(by_slot), [by_slot[s][1] for s in range(len(by_slot))], query_position

    def prefix(self, layer: int, num_slots: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Keys/values a new chunk attends to before its own, as lists to concatenate once with the chunk's:
        references ``(B, H, R, d)`` then the visible slots ``(B, H, num_slots * Nc, d)``."""
        n = num_slots * self.tokens_per_chunk
        return [self.ref_k[layer], self.slot_k[layer][:, :, :n]], [
            self.ref_v[layer],
            self.slot_v[layer][:, :, :n],
        ]

    def set_references(self, kv: list[tuple[torch.Tensor, torch.Tensor]], positions: torch.Tensor) -> None:
        """Store per-layer reference keys/values ``(B, H, R, d)`` and their positions ``(R, 3)``."""
        self.ref_k = [k.to(self.slot_k[0].dtype) for k, _ in kv]
        self.ref_v = [v.to(self.slot_v[0].dtype) for _, v in kv]
        self.ref_positions = positions

    def commit(self, kv: list[tuple[torch.Tensor, torch.Tensor]] | None) -> None:
        """Store chunk ``chunks_seen``'s per-layer keys/values ``(B, H, Nc, d)`` and advance.

        ``kv=None`` only advances the bookkeeping (used by tests of the position bound).
        """
        slot = self.slot_of(self.chunks_seen)
        if kv is not None:
            lo, hi = slot * self.tokens_per_chunk, (slot + 1) * self.tokens_per_chunk
            for layer, (k, v) in enumerate(kv):
                self.slot_k[layer][:, :, lo:hi] = k.to(self.slot_k[layer].dtype)
                self.slot_v[layer][:, :, lo:hi] = v.to(self.slot_v[layer].dtype)
        self.slot_chunk[slot] = self.chunks_seen
        self.chunks_seen += 1

    def nbytes(self) -> int:
        """Bytes held by the cache tensors (constant after prefill)."""
        tensors = [*self.slot_k, *self.slot_v, *self.ref_k, *self.ref_v]
        return sum(t.numel() * t.element_size() for t in tensors)
