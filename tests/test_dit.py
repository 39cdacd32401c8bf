"""The DiT on a micro config: streaming equals the uncached Online forward (past eviction), causality,
reference-type offsets, pose, checkpoints."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lpm.audio.mel import MelConfig
from lpm.models import Conditioning, DiT, KVCache, References, load_dit, preset, save_dit
from lpm.models.attention import chunk_visibility
from lpm.training.checkpoint import CheckpointError

NUM_CHUNKS = 6  # with S = 1, W = 2: chunks 4 and 5 run after the first eviction


def micro(**overrides) -> object:
    base = dict(
        latent_height=8,
        latent_width=8,
        dim=32,
        num_heads=2,
        num_blocks=2,
        ffn_dim=64,
        text_dim=16,
        text_layers=1,
        text_heads=2,
        text_max_bytes=16,
        audio_dim=16,
        audio_layers=1,
        frames_per_chunk=2,
        sink_chunks=1,
        window_chunks=2,
        mel=MelConfig(n_mels=8),
        partner_audio_before_frames=4,
        attention="block_causal",
        time_freq_dim=32,
    )
    base.update(overrides)
    return preset("tiny", **base)


def make_model(cfg, dtype=torch.float64, seed=0) -> DiT:
    torch.manual_seed(seed)
    model = DiT(cfg).to(dtype).eval()
    with torch.no_grad():  # random weights everywhere (the head starts at zero)
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model


def make_inputs(model: DiT, num_chunks=NUM_CHUNKS, dtype=torch.float64, seed=1):
    cfg = model.cfg
    g = torch.Generator().manual_seed(seed)
    f = num_chunks * cfg.frames_per_chunk
    fa = f + cfg.audio_lookahead_frames
    c, h, w = cfg.latent_channels, cfg.latent_height, cfg.latent_width
    x = torch.randn(1, f, c, h, w, generator=g, dtype=dtype)
    t = torch.rand(1, f, generator=g, dtype=dtype)
    mel = lambda: torch.randn(1, fa, cfg.mel.steps_per_frame, cfg.mel.n_mels, generator=g, dtype=dtype)  # noqa: E731
    with torch.no_grad():
        text, mask = model.encode_text(["she nods and smiles"])
    refs = References(
        [torch.randn(1, c, h, w, generator=g, dtype=dtype) for _ in range(3)],
        ["global", "body_front", "expr_happy"],
    )
    pose = torch.randn(1, f, 4, generator=g, dtype=dtype) * 20
    return x, t, Conditioning(text.to(dtype), mask, mel(), mel(), 0, pose, refs)


def stream(model: DiT, x, t, cond) -> torch.Tensor:
    """Chunk by chunk through the KV cache, slicing audio with ``audio_frame_range`` (and a given pose and
    motion track by frames)."""
    cfg, fc = model.cfg, model.cfg.frames_per_chunk
    cache = KVCache.empty(cfg, 1, dtype=x.dtype)
    outs = []
    with torch.no_grad():
        for c in range(x.shape[1] // fc):
            frames = slice(c * fc, (c + 1) * fc)
            start, end = model.audio_frame_range(c * fc, fc)
            chunk = dataclasses.replace(
                cond,
                audio_self=cond.audio_self[:, start:end],
                audio_partner=cond.audio_partner[:, start:end],
                audio_start_frame=start,
                pose=None if cond.pose is None else cond.pose[:, frames],
                motion=None if cond.motion is None else cond.motion[:, frames],
            )
            outs.append(model(x[:, frames], t[:, frames], chunk, cache=cache, update_cache=True))
    return torch.cat(outs, dim=1)


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-10), (torch.float32, 2e-4)])
def test_streaming_equals_online_forward_past_eviction(dtype, tol):
    model = make_model(micro(), dtype)
    x, t, cond = make_inputs(model, dtype=dtype)
    with torch.no_grad():
        full = model(x, t, cond)
    streamed = stream(model, x, t, cond)
    assert (streamed - full).abs().max() <= tol * full.abs().max()


def test_online_mask_without_eviction_is_block_causal():
    vis = chunk_visibility(8, sink_chunks=1, window_chunks=8)
    assert torch.equal(vis, torch.ones(8, 8, dtype=torch.bool).tril())
    assert not torch.equal(chunk_visibility(8, 1, 2), vis)  # a short window does evict
    # The model: with a window wider than the clip, outputs match the short-window model until it evicts.
    wide, short = make_model(micro(window_chunks=NUM_CHUNKS)), make_model(micro())
    x, t, cond = make_inputs(wide)
    with torch.no_grad():
        a, b = wide(x, t, cond), short(x, t, cond)
    fc, s, w = 2, 1, 2
    first_evicting = (s + w + 1) * fc
    assert torch.allclose(a[:, :first_evicting], b[:, :first_evicting], atol=1e-12)
    assert not torch.allclose(a[:, first_evicting:], b[:, first_evicting:], atol=1e-6)


def test_causality_frames_pose_and_audio():
    model = make_model(micro())
    cfg, fc = model.cfg, model.cfg.frames_per_chunk
    x, t, cond = make_inputs(model)
    lookahead = cfg.self_audio_lookahead_frames
    assert lookahead >= 1
    k = 2
    end_k = (k + 1) * fc  # first frame after chunk k
    with torch.no_grad():
        ref = model(x, t, cond)

        def changed(x2=x, t2=t, cond2=cond) -> torch.Tensor:
            out = model(x2, t2, cond2)
            return (out - ref).abs().amax(dim=(0, 2, 3, 4)) > 1e-12  # per frame

        x2 = x.clone()
        x2[:, end_k:] += 1.0
        t2 = t.clone()
        t2[:, end_k:] = 0.1
        pose2 = cond.pose.clone()
        pose2[:, end_k:] += 30
        for diff in (changed(x2=x2), changed(t2=t2), changed(cond2=dataclasses.replace(cond, pose=pose2))):
            assert not diff[:end_k].any() and diff[end_k:].any()
        # Audio after the declared own-speech lookahead: chunks <= k unchanged.
        for name in ("audio_self", "audio_partner"):
            audio = getattr(cond, name).clone()
            audio[:, end_k + lookahead :] += 5.0
            diff = changed(cond2=dataclasses.replace(cond, **{name: audio}))
            assert not diff[:end_k].any() and diff[end_k:].any()
        # Own speech inside the lookahead reaches chunk k (declared), never chunk k - 1.
        audio = cond.audio_self.clone()
        audio[:, end_k:] += 5.0
        diff = changed(cond2=dataclasses.replace(cond, audio_self=audio))
        assert diff[end_k - fc : end_k].any() and not diff[: end_k - fc].any()


def test_reference_types_swap_changes_reorder_does_not():
    model = make_model(micro())
    x, t, cond = make_inputs(model)
    latents, kinds = cond.references.latents, cond.references.kinds
    with torch.no_grad():
        ref = model(x, t, cond)
        reordered = References(latents[::-1], kinds[::-1])
        same = model(x, t, dataclasses.replace(cond, references=reordered))
        # Same latents, two body/expression kinds exchanged (same token count).
        swapped = References(latents, [kinds[0], kinds[2], kinds[1]])
        other = model(x, t, dataclasses.replace(cond, references=swapped))
    assert torch.allclose(same, ref, atol=1e-10)
    assert (other - ref).abs().max() > 1e-4


def test_bidirectional_base_sees_the_future_and_pose_is_optional():
    model = make_model(micro(attention="bidirectional"))
    x, t, cond = make_inputs(model)
    with torch.no_grad():
        ref = model(x, t, cond)
        x2 = x.clone()
        x2[:, -1] += 1.0
        assert (model(x2, t, cond) - ref)[:, 0].abs().max() > 1e-8
        no_pose = model(x, t, dataclasses.replace(cond, pose=None))
        odd_len = model(x[:, :5], t[:, :5], dataclasses.replace(cond, pose=cond.pose[:, :5]))  # any length
    assert no_pose.shape == ref.shape and (no_pose - ref).abs().max() > 1e-6
    assert odd_len.shape[1] == 5


def test_per_sample_and_per_frame_time_agree():
    model = make_model(micro())
    x, _, cond = make_inputs(model)
    with torch.no_grad():
        a = model(x, torch.full((1,), 0.3, dtype=x.dtype), cond)
        b = model(x, torch.full((1, x.shape[1]), 0.3, dtype=x.dtype), cond)
    assert torch.allclose(a, b)


def test_checkpoint_roundtrip_and_strict_mismatch(tmp_path):
    cfg = micro()
    model = make_model(cfg, dtype=torch.float32)
    path = save_dit(tmp_path / "dit.safetensors", model)
    loaded = load_dit(path).eval()
    x, t, cond = make_inputs(model, dtype=torch.float32)
    with torch.no_grad():
        assert torch.equal(model(x, t, cond), loaded(x, t, cond))
    with pytest.raises(CheckpointError, match="latent_channels"):
        load_dit(path, expect=dataclasses.replace(cfg, latent_channels=4))
    other = DiT(dataclasses.replace(cfg, latent_channels=4))
    from lpm.training.checkpoint import load_checkpoint, load_into

    state, _ = load_checkpoint(path)
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_into(other, state)


def test_text_encoder_interface():
    model = DiT(micro())
    tokens, mask = model.encode_text(["", "héllo wörld, a long caption that is cut"])
    assert tokens.shape == (2, 17, 16) and mask.shape == (2, 17)
    assert mask[0].sum() == 1 and mask[1].all()  # BOS only; truncated to text_max_bytes


def _audio_effect(separate: bool, caption_len: int) -> float:
    """Mean change of a cross-attention's output when the audio changes, with a caption of ``caption_len`` tokens."""
    from lpm.models.blocks import WindowedCrossAttention, audio_window

    torch.manual_seed(0)
    att = WindowedCrossAttention(16, 2, 8, 3, True, 1e-6, separate=separate)
    x, text = torch.randn(1, 2, 4, 16), torch.randn(1, caption_len, 16)
    mask = torch.ones(1, caption_len, dtype=torch.bool)
    window = audio_window(0, 2, -1, 4, 1, 1)
    a, b = torch.randn(2, 1, 4, 2, 8)
    return (att(x, text, mask, a, window) - att(x, text, mask, b, window)).abs().mean().item()


def test_separate_audio_attention_is_not_diluted_by_long_captions():
    # Joint softmax: 128 caption tokens take the attention the audio needs; separate: the audio keeps its share.
    assert _audio_effect(False, 128) < 0.25 * _audio_effect(False, 4)
    assert _audio_effect(True, 128) > 0.5 * _audio_effect(True, 4)
    assert _audio_effect(True, 128) > 3 * _audio_effect(False, 128)


def test_separate_audio_attention_with_no_audio_in_reach():
    from lpm.models.blocks import WindowedCrossAttention, audio_window

    att = WindowedCrossAttention(16, 2, 8, 3, True, 1e-6, separate=True)
    x = torch.randn(1, 2, 4, 16, requires_grad=True)
    window = audio_window(10, 2, 0, 4, 1, 1)  # frames 10-11: the 4 audio frames end long before
    assert not window.valid.any()
    out = att(x, torch.randn(1, 3, 16), torch.ones(1, 3, dtype=torch.bool), torch.randn(1, 4, 2, 8), window)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(x.grad).all()


def test_checkpoints_saved_before_audio_attention_load_as_joint(tmp_path):
    from lpm.config import to_dict
    from lpm.models.dit_config import stored_dit_config

    old = to_dict(preset("tiny"))
    old.pop("audio_attention")
    assert stored_dit_config(old).audio_attention == "joint" and preset("tiny").audio_attention == "separate"
