"""``SequenceParallelDiT``: a ``DiT`` whose forwards split their tokens over the ranks of a ``SequenceGroup``.

A drop-in for ``DiT`` wherever the runtime uses one (``DiTEngine``, ``OnlineChunkBench``): the same
``forward(x_t, t, cond, cache, update_cache, mode)``, ``prefill`` and ``empty_cache``; inputs and outputs are whole
(every rank passes the same ``x_t`` and conditioning and gets the whole prediction), so samplers, seeds and the
session run unchanged on every rank. Inside:

- tokens: after the patch embedding each rank keeps its run of every frame's tokens and of the references
  (``TokenShards``); adaLN, qk-norm, the MLP, the per-token motion map and the output head run on the shard;
- self-attention: Ulysses all-to-all to ``H / P`` heads over all tokens, the unchanged attention plan, and back
  (``UlyssesExchange``);
- KV cache: each rank caches its ``H / P`` heads of every token (keys before RoPE, as ``KVCache``): the cache's
  memory divides by P and no cached key ever crosses ranks;
- cross-attention: per frame, to the caption and the frame's audio window; every rank holds every frame, so it
  runs on the rank's query tokens with no communication (the text / audio keys are small and computed on each);
- the head's output is all-gathered at the end (``C * p * p`` per token: 64 values, vs D = 5120 inside).

Cached forwards (the generator, the prefill) talk over ``group.stream``, uncached ones (the refiner) over
``group.refine``, so a pipeline running both in two threads never mixes their collectives.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from lpm.models.attention import attend, plan_chunk, plan_full, plan_references
from lpm.models.chunk_context import ChunkContext
from lpm.models.conditioning import Conditioning, References, unpatchify
from lpm.models.dit import DiT
from lpm.models.kv_cache import KVCache
from lpm.parallel.group import SequenceGroup
from lpm.parallel.ulysses import TokenShards, UlyssesExchange


class SequenceParallelDiT(nn.Module):
    """``dit`` with its forwards split over ``group`` (see the module docstring).

    Args:
        dit: the model; every rank holds the same weights (loaded from the same checkpoint / seed).
        group: the sequence-parallel group; ``dit.cfg.num_heads`` must divide by its size.
    """

    def __init__(self, dit: DiT, group: SequenceGroup) -> None:
        super().__init__()
        group.check_heads(dit.cfg.num_heads)
        self.dit, self.group = dit, group

    # ---- what the runtime reads from a DiT ----
    @property
    def cfg(self):
        return self.dit.cfg

    def audio_margin(self) -> tuple[int, int]:
        return self.dit.audio_margin()

    def audio_frame_range(self, first_frame: int, num_frames: int) -> tuple[int, int]:
        return self.dit.audio_frame_range(first_frame, num_frames)

    def encode_text(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.dit.encode_text(texts)

    def predict_motion(self, cond: Conditioning, first_frame: int, num_frames: int) -> torch.Tensor:
        return self.dit.predict_motion(cond, first_frame, num_frames)  # the speech network is not sharded

    def empty_cache(self, batch_size: int, device=None, dtype: torch.dtype = torch.float32) -> KVCache:
        """A ``KVCache`` of this rank's ``H / P`` heads (same head width, every token)."""
        cfg, p = self.cfg, self.group.world_size
        return KVCache.empty(replace(cfg, num_heads=cfg.num_heads // p, dim=cfg.dim // p), batch_size, device, dtype)

    # ---- forwards ----
    @torch.no_grad()
    def prepare_chunk(self, cond: Conditioning, cache: KVCache,
                      attention_dtype: torch.dtype | None = None) -> ChunkContext:
        """``DiT.prepare_chunk`` on this rank's cache: the rotated cache of its heads, the cross-attention keys of
        the chunk's frames, the motion track; shared by the chunk's forwards (``context=``)."""
        if not cache.is_prefilled:
            self.prefill(cache, cond.references)
        return self.dit.prepare_chunk(cond, cache, attention_dtype)

    @torch.no_grad()
    def prefill(self, cache: KVCache, references: References | None) -> None:
        """Every layer's reference keys/values (this rank's heads) into ``cache``; ``DiT.prefill`` split."""
        dit = self.dit
        device = dit.patch_embed.weight.device
        x_ref, e_ref, positions = dit.prefill_inputs(cache, references)
        if x_ref is None:
            empty = cache.slot_k[0][:, :, :0]
            cache.set_references([(empty, empty)] * len(dit.blocks), positions)
            return
        shards = TokenShards(self.group.world_size, x_ref.shape[1], 0, self.cfg.tokens_per_frame)
        exchange = UlyssesExchange(self.group, self.group.stream, shards, device)
        groups = plan_references(dit.rope, positions, device)
        x_ref = shards.shard_refs(x_ref, self.group.rank)
        kvs = []
        for block in dit.blocks:
            attention, recorded = self._attention(exchange, groups, None)
            _, x_ref, _ = block(None, None, x_ref, e_ref, attention, None)
            kvs.append(recorded[0])
        cache.set_references(kvs, positions)

    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        cond: Conditioning,
        cache: KVCache | None = None,
        update_cache: bool = False,
        mode: str | None = None,
        context: ChunkContext | None = None,
    ) -> torch.Tensor:
        """``DiT.forward`` with the tokens split over the group; the same arguments and result.

        Args:
            x_t: ``(B, F, C, h, w)``, the same on every rank. t: ``(B,)`` or ``(B, F)``.
            cache: a cache from ``empty_cache`` (this rank's heads).
            context: ``prepare_chunk(cond, cache)`` of this chunk (cached forwards only).
        Returns:
            ``(B, F, C, h, w)``, the whole prediction on every rank.
        """
        dit, cfg, group = self.dit, self.cfg, self.group
        b, f, c, h, w = x_t.shape
        # The embedding whole on every rank (a linear per token, cheap beside the blocks), then this rank's shard.
        x, e, e6, track = dit.embed_video(x_t, t, cond, cache, context)  # (B, F, N, D), (B, F, D), (B, F, 6, D)
        first_frame = 0 if cache is None else cache.chunks_seen * cfg.frames_per_chunk
        device = x.device
        if cache is None:
            x_ref, e_ref, ref_pos = dit._references(cond.references, b, device)
            groups = plan_full(cfg, dit.rope, ref_pos, f, mode or cfg.attention, device)
            num_slots, communicator = 0, group.refine
        else:
            if f != cfg.frames_per_chunk:
                raise ValueError(f"a cached forward takes one chunk of {cfg.frames_per_chunk} frames, got {f}")
            if cache.slot_k[0].shape[1] * group.world_size != cfg.num_heads:
                raise ValueError(f"the cache holds {cache.slot_k[0].shape[1]} heads, this rank needs "
                                 f"{cfg.num_heads // group.world_size}: make it with empty_cache")
            if not cache.is_prefilled:
                self.prefill(cache, cond.references)
            x_ref = e_ref = None
            if context is None:
                groups, num_slots = plan_chunk(cfg, dit.rope, cache, device)
            communicator = group.stream
        cross = context.cross if context is not None else dit._cross_inputs(cond, first_frame, f)
        r = 0 if x_ref is None else x_ref.shape[1]
        shards = TokenShards(group.world_size, r, f, cfg.tokens_per_frame)
        exchange = UlyssesExchange(group, communicator, shards, device)
        x = shards.shard_video(x, group.rank)  # (B, F, ceil(N/P), D)
        if x_ref is not None:
            x_ref = shards.shard_refs(x_ref, group.rank)  # (B, ceil(R/P), D)
        new_kv = []
        for layer, block in enumerate(dit.blocks):
            memory = None
            if context is not None:  # the chunk's rotated cache of this rank's heads, its cross-attention keys
                attention, recorded = self._attention(exchange, None, None, context.attention(layer))
                memory = context.cross_memory[layer]
            else:
                prefix = None if cache is None else cache.prefix(layer, num_slots)
                attention, recorded = self._attention(exchange, groups, prefix)
            x, x_ref, _ = block(x, e6, x_ref, e_ref, attention, cross, memory)
            new_kv.append(recorded[0])
        if cache is not None and update_cache:
            cache.commit(new_kv)
        out = shards.gather_video(dit.head(x, e), group, communicator)  # (B, F, N, C*p*p)
        return dit.finish_output(unpatchify(out, cfg.patch_size, c, h, w), cond, cache, track)

    @staticmethod
    def _attention(exchange: UlyssesExchange, groups, prefix, whole=None):
        """The block's ``attention(q, k, v)`` for a token shard, and a list receiving this forward's canonical
        keys/values of this rank's heads ``(B, H/P, R + F*N, d)`` (what the cache stores). ``whole``: an attention
        over whole sequences to use instead of the plan (a chunk context's)."""
        recorded: list[tuple[torch.Tensor, torch.Tensor]] = []

        def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            q, k, v = exchange.to_heads(q, k, v)  # each (B, H/P, R + F*N, d)
            recorded.append((k, v))
            if whole is not None:
                return exchange.to_tokens(whole(q, k, v))
            if prefix is not None:
                pk, pv = prefix
                k = torch.cat([*(c.to(k.dtype) for c in pk), k], 2)  # (B, H/P, R + slots*Nc + Nc, d)
                v = torch.cat([*(c.to(v.dtype) for c in pv), v], 2)
            return exchange.to_tokens(attend(q, k, v, groups))

        return attention, recorded
