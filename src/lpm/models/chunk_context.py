"""``ChunkContext``: what every forward of one streamed chunk shares, computed once per chunk.

A cached Online chunk runs several forwards on the same conditioning and the same cache state: the denoising
steps and the commit (CausVid / Self-Forcing). Of each forward, only the latents and the flow time change;
everything else is the same every time:

- the cached keys (references, sinks, the rolling window) rotated to this chunk's window-relative positions;
  without a context every forward concatenates them with its own keys and rotates all of them again;
- every block's cross-attention keys/values over the caption and the audio windows (``CrossMemory``);
- the audio tokens, the caption projection and the predicted motion track.

``DiT.prepare_chunk(cond, cache)`` builds it; ``DiT.forward(..., context=ctx)`` uses it and equals the forward
without it (same operations on the same inputs: tested in ``tests/test_kv_cache.py``). A context belongs to
chunk ``cache.chunks_seen`` at the time it was made; after a commit it is stale and refused.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lpm.models.attention import AttentionGroup
from lpm.models.blocks import CrossInputs, CrossMemory
from lpm.models.kv_cache import KVCache
from lpm.models.motion_track import MotionInputs
from lpm.models.rope import apply_rope


@dataclass
class ChunkContext:
    """The shared part of one chunk's forwards (build with ``ChunkContext.build``).

    Attributes:
        chunk: the chunk it belongs to (``cache.chunks_seen`` when built).
        attention_dtype: the dtype the self-attention computes in (its keys/values are held in it), or None for
            the forward's own dtype (``F.scaled_dot_product_attention``). ``torch.bfloat16`` on a CPU with
            avx512_bf16 or AMX: the scores, the softmax (accumulated in fp32 by the kernel) and the weighted sum
            run in bf16 (1.8x faster than fp32 SDPA on avx512_bf16 at 256 x 1,488 tokens; bf16 SDPA is not).
        motion: the motion track's ``MotionInputs`` (embeddings and the track), or None without a track.
        cross: the forward's cross-attention inputs (audio tokens, projected caption, windows).
        cross_memory: per block, its cross-attention keys/values.
        q_rope: ``(cos, sin)`` each ``(Nc, d/2)``: the chunk's query positions.
        tail_rope: ``(cos, sin)`` each ``(Nc, d/2)``: the chunk's own key positions.
        keys, values: per layer ``(B, H, P + Nc, d)``: the ``P`` cached keys already rotated (values as they
            are), then room for the forward's own ``Nc`` keys/values, overwritten by every forward.
        prefix_tokens: ``P`` = references + visible cached chunks.
    """

    chunk: int
    motion: MotionInputs | None
    cross: CrossInputs
    cross_memory: list[CrossMemory]
    q_rope: tuple[torch.Tensor, torch.Tensor]
    tail_rope: tuple[torch.Tensor, torch.Tensor]
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    prefix_tokens: int
    attention_dtype: torch.dtype | None = None

    @classmethod
    def build(cls, cache: KVCache, group: AttentionGroup, num_slots: int, cross: CrossInputs,
              cross_memory: list[CrossMemory],
              motion: MotionInputs | None, attention_dtype: torch.dtype | None = None) -> ChunkContext:
        """Rotate the visible cache once (``group`` is ``plan_chunk``'s single group: keys
        ``[references | num_slots chunks | the chunk]``) and keep the per-chunk inputs."""
        if group.q_index is not None or group.k_index is not None or group.mask is not None:
            raise ValueError("a chunk context takes plan_chunk's single unmasked, ungathered group")
        cos, sin = group.k_rope
        keys, values = [], []
        prefix = 0
        for layer in range(cache.num_layers):
            pk, pv = cache.prefix(layer, num_slots)  # [refs (B, H, R, d), slots (B, H, n*Nc, d)]
            prefix = sum(part.shape[2] for part in pk)
            b, h, _, d = pk[0].shape
            tail = cos.shape[0] - prefix
            dtype = attention_dtype or pk[0].dtype
            # Rotated straight into the buffer, cast on assignment: no concatenated copy of the cache.
            k_all = pk[0].new_empty(b, h, prefix + tail, d, dtype=dtype)
            v_all = pk[0].new_empty(b, h, prefix + tail, d, dtype=dtype)
            at = 0
            for k_part, v_part in zip(pk, pv):
                n = k_part.shape[2]
                k_all[:, :, at:at + n] = apply_rope(k_part, cos[at:at + n], sin[at:at + n])
                v_all[:, :, at:at + n] = v_part
                at += n
            keys.append(k_all)
            values.append(v_all)
        return cls(cache.chunks_seen, motion, cross, cross_memory, group.q_rope,
                   (cos[prefix:], sin[prefix:]), keys, values, prefix, attention_dtype)

    def attention(self, layer: int) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
        """Layer ``layer``'s attention ``(q, k, v) -> o``, all ``(B, H, Nc, d)``: the chunk's rotated keys go
        after the rotated cache (what ``attention.attend`` computes for the plan's group, without redoing the
        cache's part)."""

        def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            dtype = self.attention_dtype or k.dtype
            if self.keys[layer].dtype != dtype:  # e.g. a bf16 autocast forward over an fp32 cache: once
                self.keys[layer] = self.keys[layer].to(dtype)
                self.values[layer] = self.values[layer].to(dtype)
            k_all, v_all, p = self.keys[layer], self.values[layer], self.prefix_tokens
            k_all[:, :, p:] = apply_rope(k, *self.tail_rope)  # cast to the keys' dtype on assignment
            v_all[:, :, p:] = v
            q = apply_rope(q, *self.q_rope)
            if dtype == q.dtype:
                return F.scaled_dot_product_attention(q, k_all, v_all)  # (B, H, Nc, d)
            scores = torch.matmul((q * q.shape[-1] ** -0.5).to(dtype), k_all.transpose(-1, -2))  # (B, H, Nc, P+Nc)
            return torch.matmul(scores.softmax(-1), v_all).to(q.dtype)  # CPU softmax accumulates bf16 in fp32

        return attend
