"""Log-mel (frame-aligned, causal), its streaming buffer, and the causal audio encoder."""

from __future__ import annotations

import pytest
import torch

from lpm.audio import PARTNER_STREAM, SELF_STREAM, AudioEncoder, LogMel, MelConfig, MelStream
from lpm.config import ConfigError


def test_integer_steps_per_frame_at_16k_24fps():
    cfg = MelConfig()
    assert cfg.hop * cfg.steps_per_frame == cfg.sample_rate * cfg.upsample // cfg.fps == 2000
    feats = LogMel(cfg)(torch.randn(2, 16000) * 0.1)
    assert feats.shape == (2, 24, 4, 80)  # one second = 24 frames x 4 steps
    with pytest.raises(ConfigError, match="divisible"):
        MelConfig(upsample=1)


def test_streaming_features_equal_offline():
    cfg = MelConfig(n_mels=40)
    pcm = torch.randn(2, 16000 * 2) * 0.1
    offline = LogMel(cfg)(pcm)
    stream = MelStream(cfg, batch_size=2)
    g = torch.Generator().manual_seed(0)
    pieces, i = [], 0
    while i < pcm.shape[1]:
        n = int(torch.randint(0, 2500, (1,), generator=g))
        pieces.append(stream.push(pcm[:, i : i + n]))
        i += n
    streamed = torch.cat(pieces, dim=1)
    assert streamed.shape == offline.shape and stream.frames_emitted == 48
    assert torch.allclose(streamed, offline, atol=1e-5)


def test_features_are_causal_and_tone_lands_in_its_band():
    mel = LogMel(MelConfig())
    pcm = torch.randn(1, 16000) * 0.05
    later = pcm.clone()
    cut = 16000 // 2  # frame 12 starts at sample 8000
    later[:, cut:] = 0
    a, b = mel(pcm), mel(later)
    assert torch.equal(a[:, :12], b[:, :12]) and not torch.allclose(a[:, 12:], b[:, 12:])
    t = torch.arange(16000) / 16000
    low, high = mel(torch.sin(2 * torch.pi * 300 * t)[None]), mel(torch.sin(2 * torch.pi * 4000 * t)[None])
    assert low[0, 5:].mean((0, 1)).argmax() < high[0, 5:].mean((0, 1)).argmax()


def test_encoder_is_causal_and_streams_with_its_history():
    enc = AudioEncoder(
        n_mels=8, steps_per_frame=4, dim=16, num_layers=2, kernel_steps=5, tokens_per_frame=2
    ).eval()
    mel = torch.randn(1, 20, 4, 8)
    with torch.no_grad():
        full = enc(mel, SELF_STREAM)
        assert full.shape == (1, 20, 2, 16)
        changed = mel.clone()
        changed[:, 10:] += 1.0
        diff = (enc(changed, SELF_STREAM) - full).abs().amax(dim=(0, 2, 3))
        assert not diff[:10].any() and diff[10:].all()
        h = enc.history_frames
        start = 12 - h  # a slice starting h frames before frame 12 reproduces frames >= 12
        part = enc(mel[:, start:], SELF_STREAM)
        assert torch.allclose(part[:, h:], full[:, 12:], atol=1e-6)
        assert not torch.allclose(enc(mel, PARTNER_STREAM), full)
