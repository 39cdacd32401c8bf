"""``DiT.prepare_chunk``: a chunk's forwards with the shared context (rotated cache, cross-attention keys/values,
audio tokens, motion track computed once) equal the forwards without it, steps and commit (also a ``keys_only``
commit), past eviction."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from tests.test_dit import make_inputs, make_model, micro

from lpm.models import KVCache


def chunk_cond(model, cond, c):
    fc = model.cfg.frames_per_chunk
    start, end = model.audio_frame_range(c * fc, fc)
    return dataclasses.replace(cond, audio_self=cond.audio_self[:, start:end],
                               audio_partner=cond.audio_partner[:, start:end], audio_start_frame=start,
                               pose=cond.pose[:, c * fc:(c + 1) * fc])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_context_forwards_equal_plain_forwards_past_eviction(dtype):
    model = make_model(micro(), dtype)
    x, t, cond = make_inputs(model, num_chunks=7, dtype=dtype)
    fc = model.cfg.frames_per_chunk
    plain, shared = KVCache.empty(model.cfg, 1, dtype=dtype), KVCache.empty(model.cfg, 1, dtype=dtype)
    with torch.no_grad():
        for c in range(7):  # S = 1, W = 2: chunks 4.. evict
            chunk = chunk_cond(model, cond, c)
            frames = x[:, c * fc:(c + 1) * fc]
            context = model.prepare_chunk(chunk, shared)
            for step, t_step in enumerate((1.0, 0.75, 0.3)):  # denoising steps read the cache
                noisy = frames + step * 0.5
                tt = torch.full((1,), t_step, dtype=dtype)
                a = model(noisy, tt, chunk, cache=plain)
                b = model(noisy, tt, chunk, cache=shared, context=context)
                assert torch.equal(a, b), (c, step, (a - b).abs().max())
            zero = torch.zeros(1, dtype=dtype)
            a = model(frames, zero, chunk, cache=plain, update_cache=True)  # the commit
            keys_only = c % 2 == 1  # every other commit stops at the last block's keys (the engine's commit)
            b = model(frames, zero, chunk, cache=shared, update_cache=True, context=context, keys_only=keys_only)
            assert b is None if keys_only else torch.equal(a, b)
            for k_a, k_b in zip(plain.slot_k + plain.slot_v, shared.slot_k + shared.slot_v):
                assert torch.equal(k_a, k_b)
            with pytest.raises(ValueError, match="prepared for chunk"):  # stale after the commit
                model(frames, zero, chunk, cache=shared, context=context)
    with pytest.raises(ValueError, match="keys_only is a cache commit"):
        model(frames, zero, chunk, cache=shared, keys_only=True)


def test_cross_memory_equals_the_inline_cross_attention():
    model = make_model(micro(), torch.float64)
    x, t, cond = make_inputs(model, num_chunks=1)
    with torch.no_grad():
        cross = model._cross_inputs(chunk_cond(model, cond, 0), 0, model.cfg.frames_per_chunk)
        tokens = torch.randn(1, model.cfg.frames_per_chunk, model.cfg.tokens_per_frame, model.cfg.dim,
                             dtype=torch.float64)
        for block in model.blocks:
            window = cross.window_partner if block.partner else cross.window_self
            audio = cross.audio_partner if block.partner else cross.audio_self
            inline = block.cross_attn(tokens, cross.text, cross.text_mask, audio, window)
            assert torch.equal(inline, block.cross_attn(tokens, memory=block.cross_memory(cross)))


@pytest.mark.parametrize("chunk", [0, 1, 5])
def test_windowed_audio_tokens_equal_encoding_the_whole_range(chunk):
    """``_cross_inputs`` encodes only the frames the windows read (plus the encoder's history): every valid window
    entry's token equals the one of encoding the chunk's whole audio range (the speech network's history)."""
    from lpm.audio.encoder import PARTNER_STREAM, SELF_STREAM
    from lpm.models.blocks import audio_window

    model = make_model(micro(), torch.float64)
    _, _, cond = make_inputs(model, num_chunks=6, dtype=torch.float64)
    fc, cfg = model.cfg.frames_per_chunk, model.cfg
    c = chunk_cond(model, cond, chunk)
    with torch.no_grad():
        cross = model._cross_inputs(c, chunk * fc, fc)
        for stream, mel, tokens, window, (before, after) in (
                (SELF_STREAM, c.audio_self, cross.audio_self, cross.window_self,
                 (cfg.self_audio_before_frames, cfg.self_audio_lookahead_frames)),
                (PARTNER_STREAM, c.audio_partner, cross.audio_partner, cross.window_partner,
                 (cfg.partner_audio_before_frames, cfg.partner_audio_after_frames))):
            full = model.audio_encoder(mel, stream)
            ref = audio_window(chunk * fc, fc, c.audio_start_frame, mel.shape[1], before, after)
            assert torch.equal(window.valid, ref.valid)
            assert tokens.shape[1] <= fc + before + after  # the window's frames only
            got, want = tokens[:, window.index][:, window.valid], full[:, ref.index][:, ref.valid]
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
