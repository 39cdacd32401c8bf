"""Idle head motion (lpm.models.idle_motion): nothing until calibrated; calibrated, its offsets and sway have the
measured spreads; a function of the frame index (streamed == whole), per character, and a clear error on bad input."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from lpm.models.idle_motion import IdleMotion, calibrate_idle
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
