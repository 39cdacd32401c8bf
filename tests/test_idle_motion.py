"""Idle head motion (lpm.models.idle_motion): nothing until calibrated; calibrated, its offsets and sway have the
measured spreads; a function of the frame index (streamed == whole), per character, and a clear error on bad input."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from lpm.models.idle_motion import IdleMotion, calibrate_blinks, calibrate_idle
from test_dit import make_inputs, make_model, micro, stream

CHANNELS = ("jaw_open", "head_yaw", "head_pitch", "head_roll")


def calibrated(seed=0, latent_channels=4) -> IdleMotion:
    rng = np.random.default_rng(seed)
    frames = np.arange(96)[None, :, None]
    tracks = (rng.normal(0, [0.8, 0.4, 0.3], (200, 1, 3))  # held offsets per clip
              + 0.2 * np.sin(2 * np.pi * 0.02 * frames + rng.uniform(0, 6.3, (200, 1, 3))))  # a slow sway
    idle = IdleMotion(CHANNELS, latent_channels)
    stats = calibrate_idle(idle, tracks)
    assert np.allclose(stats.offset_std, [0.8, 0.4, 0.3], rtol=0.25)
    assert np.allclose(stats.sway_std, 0.2 / np.sqrt(2), rtol=0.25)
    freqs = np.array(stats.frequencies)  # drawn where the spectrum is (a window's leakage spreads a little)
    assert abs(np.median(freqs) - 0.02) < 0.005 and freqs.max() < 0.07
    return idle


def test_uncalibrated_adds_nothing_and_calibrated_has_the_measured_spread_per_character():
    refs = torch.randn(400, 4, 8, 8)
    assert not IdleMotion(CHANNELS, 4)(refs[:2], 0, 16).any()
    idle = calibrated()
    out = idle(refs, 0, 400)  # (B, F, P)
    assert not out[..., 0].any()  # only the head pose moves
    offsets = out[..., 1:].mean(1)  # per character, over 400 frames the sway averages out
    assert torch.allclose(offsets.std(0), idle.offset_std, rtol=0.3)
    sway = out[..., 1:] - offsets[:, None]
    assert torch.allclose(sway.std((0, 1)), idle.sway_std, rtol=0.3)
    assert torch.equal(idle(refs[:3], 0, 12)[:, 4:], idle(refs[:3], 4, 8))  # the frame index alone: streamable
    assert torch.equal(idle(refs[:1], 0, 8), idle(refs[:1].clone(), 0, 8))  # the same character, the same motion


def test_bad_calibration_input_is_a_clear_error():
    with pytest.raises(ValueError, match="head-pose channels"):
        calibrate_idle(IdleMotion(CHANNELS, 4), np.zeros((10, 96, 2)))
    with pytest.raises(ValueError, match="head-pose channels"):
        IdleMotion(("jaw_open",), 4)


def test_the_dit_adds_it_to_the_predicted_track_and_streams_equal_to_the_full_forward():
    cfg = micro(reference_residual=True, motion_channels=CHANNELS, motion_spatial=True)
    plain = make_model(cfg)
    model = make_model(dataclasses.replace(cfg, idle_motion=True))
    state = plain.state_dict()
    with torch.no_grad():
        idle = calibrated(latent_channels=cfg.latent_channels)
        state.update({f"idle_motion.{k}": v.double() for k, v in idle.state_dict().items()})
    model.load_state_dict(state)
    x, t, cond = make_inputs(model)
    with torch.no_grad():
        full = model(x, t, cond)
        assert (full - plain(x, t, cond)).abs().max() > 1e-3  # the idle pose reaches the frame
    streamed = stream(model, x, t, cond)
    assert (streamed - full).abs().max() <= 1e-6 * full.abs().max()


BLINK_TRACK = ("blink_l", "blink_r", "head_yaw", "head_pitch", "head_roll")


def world_like_blinks(clips=60, frames=240, mean_gap=70, seed=0) -> np.ndarray:
    """Blink tracks with the world's shape at exponential gaps (``lpm.world.controller``'s process)."""
    rng = np.random.default_rng(seed)
    shape = np.array([0.5, 1.0, 1.0, 0.6, 0.25])
    out = np.zeros((clips, frames))
    for c in range(clips):
        f = int(rng.integers(0, 30))
        while f < frames:
            out[c, f:f + 5] += shape[:frames - f]
            f += max(7, int(rng.exponential(mean_gap)))
    return out


def test_blinks_have_the_measured_rate_and_shape_per_character_and_stream():
    tracks = world_like_blinks()
    idle = IdleMotion(BLINK_TRACK, 4)
    refs = torch.randn(6, 4, 8, 8)
    assert not idle(refs, 0, 50).any()  # uncalibrated: no blinks
    stats = calibrate_blinks(idle, tracks)
    true_rate = ((tracks[:, 1:] >= 0.3) & (tracks[:, :-1] < 0.3)).sum() / tracks.size
    assert abs(1 / stats.period - true_rate) < 1e-9
    assert np.allclose(stats.shape[:5], [0.5, 1.0, 1.0, 0.6, 0.25], atol=0.05)
    assert max(stats.shape[5:]) < 0.1  # the next blink: rare so soon
    out = idle(refs, 0, 2000)  # (B, F, P)
    blink = out[..., 0]
    assert torch.equal(blink, out[..., 1])  # both eyes
    onsets = ((blink[:, 1:] >= 0.3) & (blink[:, :-1] < 0.3)).sum(1).double()
    assert torch.allclose(onsets / 2000, torch.full_like(onsets, 1 / stats.period), rtol=0.1)
    assert blink.max() <= max(stats.shape) + 1e-6  # blinks never overlap
    assert not torch.equal(blink[0], blink[1])  # another character blinks at other times
    assert torch.equal(idle(refs[:2], 0, 300)[:, 137:], idle(refs[:2], 137, 163))  # the frame index alone


def test_bad_blink_calibration_is_a_clear_error():
    with pytest.raises(ValueError, match="no blink channels"):
        calibrate_blinks(IdleMotion(CHANNELS, 4), world_like_blinks())
    with pytest.raises(ValueError, match="too few"):
        calibrate_blinks(IdleMotion(BLINK_TRACK, 4), np.zeros((4, 100)))
