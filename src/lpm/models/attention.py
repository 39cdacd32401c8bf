"""Attention patterns of the DiT, defined once and used by both the uncached and the cached (streaming) path.

Masks (LPM 1.0 arXiv 2604.07823; CausVid / Self-Forcing for the block-causal student):
- Base: bidirectional over the clip's video tokens.
- Online: block-causal over chunks, restricted to ``S`` sink chunks and a rolling window of the last ``W``
  chunks (``chunk_visibility``). With ``W`` at least the clip length this is plain block-causal.
- References attend to references only (so their keys/values are computed once per session and cached);
  every video token attends to all references.

Rotary time positions are *relative to the window* (``online_chunk_positions``): sinks keep chunk positions
``0..S-1``, the window chunks are renumbered ``S..S+W-1`` from the window start, and the query chunk follows.
Until the first eviction this equals the absolute position; afterwards the query chunk always sits at ``S+W``,
so no position beyond the first full window is ever used, however long the session.

An ``AttentionGroup`` is one batched SDPA call: a set of query tokens, the keys they see, the positions to
rotate both with, and an optional boolean mask. A forward runs a list of groups whose query sets,
concatenated, are the forward's tokens in order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from lpm.models.dit_config import DiTConfig
from lpm.models.rope import Rope3D, apply_rope, grid_positions

if TYPE_CHECKING:
    from lpm.models.kv_cache import KVCache


def chunk_visibility(num_chunks: int, sink_chunks: int, window_chunks: int | None) -> torch.Tensor:
    """Which chunks each chunk sees under the Online mask.

    Args:
        num_chunks: C.
        sink_chunks: S, chunks always visible.
        window_chunks: W, previous non-sink chunks visible; ``None`` for plain block-causal.
    Returns:
        ``(C, C)`` bool, ``[c, j]`` True where chunk ``c`` attends to chunk ``j``.
    """
    c = torch.arange(num_chunks)[:, None]
    j = torch.arange(num_chunks)[None, :]
    causal = j <= c
    if window_chunks is None:
        return causal
    window_start = torch.clamp(c - window_chunks, min=sink_chunks)
    return causal & ((j < sink_chunks) | (j >= window_start))


def online_chunk_positions(
    chunk: int, sink_chunks: int, window_chunks: int
) -> tuple[list[int], list[int], int]:
    """Key chunks visible to ``chunk`` (itself excluded) with their rotary chunk positions, and its own.

    Returns:
        ``(key_chunks, key_positions, query_position)``; positions never exceed ``S + W``.
    """
    sinks = list(range(min(chunk, sink_chunks)))
    if chunk < sink_chunks:
        return sinks, sinks, chunk
    start = max(sink_chunks, chunk - window_chunks)
    window = list(range(start, chunk))
    positions = sinks + [sink_chunks + (j - start) for j in window]
    return sinks + window, positions, sink_chunks + (chunk - start)


@dataclass
class AttentionGroup:
    """One batched attention call over ``G`` query sets of equal size.

    Attributes:
        q_index: ``(G, Nq)`` token indices of the queries, or None for all tokens of the forward (G = 1).
        k_index: ``(G, Nk)`` indices into the key source ``[cached prefix | this forward's tokens]``, or None
            for the whole source (G = 1).
        q_rope: ``(cos, sin)`` each ``(Nq, d/2)``; the same for every set of the group.
        k_rope: ``(cos, sin)`` each ``(Nk, d/2)``.
        mask: ``(Nq, Nk)`` bool (True = attend) or None.
    """

    q_index: torch.Tensor | None
    k_index: torch.Tensor | None
    q_rope: tuple[torch.Tensor, torch.Tensor]
    k_rope: tuple[torch.Tensor, torch.Tensor]
    mask: torch.Tensor | None = None


def _take(x: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    """``(B, H, N, d)`` -> ``(B, G, H, n, d)`` with ``index`` ``(G, n)`` (None -> G = 1, all tokens)."""
    if index is None:
        return x.unsqueeze(1)
    b, h, _, d = x.shape
    g, n = index.shape
    out = x.index_select(2, index.reshape(-1).to(x.device))  # (B, H, G*n, d)
    return out.reshape(b, h, g, n, d).transpose(1, 2)  # (B, G, H, n, d)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, groups: list[AttentionGroup]) -> torch.Tensor:
    """Run each group's SDPA and concatenate the outputs along the token axis.

    Args:
        q: ``(B, H, Nq_total, d)`` un-rotated queries of this forward.
        k, v: ``(B, H, Nk_total, d)`` un-rotated keys / values: cached prefix then this forward's tokens.
        groups: query sets in token order.
    Returns:
        ``(B, H, Nq_total, d)``.
    """
    outs = []
    for g in groups:
        qg = apply_rope(_take(q, g.q_index), *g.q_rope)  # (B, G, H, Nq, d)
        kg = apply_rope(_take(k, g.k_index), *g.k_rope)  # (B, G, H, Nk, d)
        vg = _take(v, g.k_index)
        b, n_sets, h, nq, d = qg.shape
        o = F.scaled_dot_product_attention(
            qg.reshape(b * n_sets, h, nq, d),
            kg.reshape(b * n_sets, h, -1, d),
            vg.reshape(b * n_sets, h, -1, d),
            attn_mask=None if g.mask is None else g.mask.to(q.device),
        )  # (B*G, H, Nq, d)
        outs.append(o.reshape(b, n_sets, h, nq, d).transpose(1, 2).reshape(b, h, n_sets * nq, d))
    return torch.cat(outs, dim=2)


# ---- plans: the groups of one forward ----
def video_positions(cfg: DiTConfig, frame_times: torch.Tensor) -> torch.Tensor:
    """Rotary positions ``(len(frame_times) * Nf, 3)`` of video tokens at the given frame times."""
    rows, cols = cfg.patch_grid
    return grid_positions(frame_times, rows, cols)


def chunk_frame_times(cfg: DiTConfig, chunk_positions: list[int]) -> torch.Tensor:
    """Frame times of chunks at rotary chunk positions: ``pos * Fc + i`` for ``i < Fc``."""
    fc = cfg.frames_per_chunk
    return (
        torch.tensor(chunk_positions, dtype=torch.float64)[:, None] * fc
        + torch.arange(fc, dtype=torch.float64)
    ).reshape(-1)


def _group(rope: Rope3D, q_index, k_index, q_pos, k_pos, mask, device) -> AttentionGroup:
    def idx(x):
        return None if x is None else x.to(device)

    return AttentionGroup(
        idx(q_index),
        idx(k_index),
        tuple(t.to(device) for t in rope.cos_sin(q_pos)),
        tuple(t.to(device) for t in rope.cos_sin(k_pos)),
        idx(mask),
    )


def plan_references(rope: Rope3D, ref_positions: torch.Tensor, device=None) -> list[AttentionGroup]:
    """References attending to references only (the prefill of a session)."""
    return [_group(rope, None, None, ref_positions, ref_positions, None, device)]


def plan_full(
    cfg: DiTConfig, rope: Rope3D, ref_positions: torch.Tensor, num_frames: int, mode: str, device=None
) -> list[AttentionGroup]:
    """Groups of an uncached forward over tokens ``[references (R) | video (num_frames * Nf)]``.

    Args:
        ref_positions: ``(R, 3)``; R may be 0.
        mode: ``bidirectional`` (Base) or ``block_causal`` (Online: sinks + rolling window, relative
            positions).
    """
    r, nf, nc = ref_positions.shape[0], cfg.tokens_per_frame, cfg.tokens_per_chunk
    n = num_frames * nf
    groups = (
        []
        if r == 0
        else [
            _group(
                rope, torch.arange(r)[None], torch.arange(r)[None], ref_positions, ref_positions, None, device
            )
        ]
    )
    if mode == "bidirectional":
        pos = torch.cat([ref_positions, video_positions(cfg, torch.arange(num_frames, dtype=torch.float64))])
        groups.append(_group(rope, torch.arange(r, r + n)[None], None, pos[r:], pos, None, device))
        return groups
    if num_frames % cfg.frames_per_chunk:
        raise ValueError(
            f"block-causal forward needs a whole number of chunks: {num_frames} frames, "
            f"{cfg.frames_per_chunk} per chunk"
        )
    s, w = cfg.sink_chunks, cfg.window_chunks
    num_chunks = num_frames // cfg.frames_per_chunk
    # Chunks c <= S + W: positions are absolute, one masked call.
    n_abs = min(num_chunks, s + w + 1)
    vis = chunk_visibility(n_abs, s, w).repeat_interleave(nc, 0).repeat_interleave(nc, 1)
    mask = torch.cat([torch.ones(n_abs * nc, r, dtype=torch.bool), vis], dim=1)  # (n_abs*Nc, R + n_abs*Nc)
    pos = torch.cat([ref_positions, video_positions(cfg, chunk_frame_times(cfg, list(range(n_abs))))])
    groups.append(
        _group(
            rope,
            torch.arange(r, r + n_abs * nc)[None],
            torch.arange(r + n_abs * nc)[None],
            pos[r:],
            pos,
            mask,
            device,
        )
    )
    # Chunks past the first full window: each sees refs + sinks + its window + itself, all at the same
    # relative positions, so they batch into one call with gathered keys.
    later = list(range(n_abs, num_chunks))
    if later:
        key_rows = []
        for c in later:
            key_chunks, key_pos, q_pos = online_chunk_positions(c, s, w)
            chunks = torch.tensor([*key_chunks, c])
            tokens = (r + chunks[:, None] * nc + torch.arange(nc)).reshape(-1)
            key_rows.append(torch.cat([torch.arange(r), tokens]))
        q_times = chunk_frame_times(cfg, [q_pos])
        k_pos = torch.cat([ref_positions, video_positions(cfg, chunk_frame_times(cfg, [*key_pos, q_pos]))])
        q_index = (r + torch.tensor(later)[:, None] * nc + torch.arange(nc)).reshape(len(later), nc)
        groups.append(
            _group(rope, q_index, torch.stack(key_rows), video_positions(cfg, q_times), k_pos, None, device)
        )
    return groups


def plan_chunk(cfg: DiTConfig, rope: Rope3D, cache: KVCache, device=None) -> tuple[list[AttentionGroup], int]:
    """The group of a cached forward of the next chunk, and how many cached slots it reads.

    Keys are ``[references | visible slots | the chunk itself]`` rotated at the window-relative positions of
    ``online_chunk_positions``; records the largest time position used in ``cache.max_time_position``.
    """
    num_slots, slot_positions, q_pos = cache.context()
    q_times = chunk_frame_times(cfg, [q_pos])
    k_pos = torch.cat(
        [cache.ref_positions.cpu(), video_positions(cfg, chunk_frame_times(cfg, [*slot_positions, q_pos]))]
    )
    cache.max_time_position = max(cache.max_time_position, float(q_times.max()))
    return [_group(rope, None, None, video_positions(cfg, q_times), k_pos, None, device)], num_slots
