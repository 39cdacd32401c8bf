"""The text control in the motion track: the caption's bag of words, the speech network reading it, the DiT's
track widened to new channels (unchanged while they are zero), and training that predicts only some channels."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from lpm.models.caption_bag import caption_bag, caption_words
from lpm.models.dit import DiT
from lpm.models.motion_track import SpeechMotion, save_speech, speech_settings, widen_track
from test_dit import make_inputs, make_model, micro

OLD = ("jaw_open", "head_yaw", "head_pitch", "head_roll")
NEW = ("jaw_open", "emo_happy", "head_yaw", "head_pitch", "head_roll", "emo_sad")


def test_caption_bag_is_fixed_case_blind_and_empty_for_no_text():
    a = caption_bag(["A VERY happy character, speaking.", "a very happy character speaking", ""], 64)
    assert a.shape == (3, 64)
    assert torch.equal(a[0], a[1]) and a[2].sum() == 0
    assert 1 <= a[0].sum() <= len(set(caption_words("a very happy character speaking")))  # <: bucket collisions
    assert not torch.equal(caption_bag(["very happy"], 256), caption_bag(["slightly sad"], 256))
    assert torch.equal(caption_bag(["happy"], 256), caption_bag(["happy"], 256))  # no salted hash
    with pytest.raises(TypeError, match="caption 0"):
        caption_bag([None], 8)  # type: ignore[list-item]
    with pytest.raises(ValueError, match="buckets"):
        caption_bag(["x"], 0)


def test_speech_network_reads_the_caption_and_none_is_the_empty_caption():
    torch.manual_seed(0)
    net = SpeechMotion(8, 4, ("jaw_open", "emo_happy"), 16, (1, 2), 1, caption_buckets=32).eval()
    mel = torch.randn(1, 10, 4, 8).expand(2, -1, -1, -1)  # the same voice twice
    with torch.no_grad():
        happy = net(mel, mel, ["very happy", "very happy"])
        sad = net(mel, mel, ["very sad", "very sad"])
        assert not torch.allclose(happy, sad)
        assert torch.allclose(happy[0], happy[1])
        assert torch.equal(net(mel, mel, None), net(mel, mel, ["", ""]))
    with pytest.raises(ValueError, match="1 captions for a batch of 2"):
        net(mel, mel, ["one"])
    plain = SpeechMotion(8, 4, ("jaw_open",), 16, (1, 2), 1)
    assert plain.caption_in is None  # a network without the input ignores captions
    with torch.no_grad():
        assert torch.equal(plain(mel, mel, ["a", "b"]), plain(mel, mel))


def test_widened_track_keeps_the_model_while_the_new_channels_are_zero():
    old_cfg = micro(motion_channels=OLD, motion_spatial=True)
    new_cfg = dataclasses.replace(old_cfg, motion_channels=NEW, speech_caption_buckets=16)
    old = make_model(old_cfg)
    new = DiT(new_cfg).to(torch.float64).eval()
    missing, unexpected = new.load_state_dict(widen_track(old.state_dict(), OLD, NEW), strict=False)
    assert not unexpected and missing and all(k.startswith("speech_motion.") for k in missing)
    x, t, cond = make_inputs(old)
    g = torch.Generator().manual_seed(3)
    track = torch.randn(1, x.shape[1], len(OLD), generator=g, dtype=x.dtype)
    wide = torch.zeros(1, x.shape[1], len(NEW), dtype=x.dtype)
    wide[..., [NEW.index(c) for c in OLD]] = track
    with torch.no_grad():
        want = old(x, t, dataclasses.replace(cond, motion=track))
        got = new(x, t, dataclasses.replace(cond, motion=wide))
        assert torch.allclose(want, got, atol=1e-10)
        wide[..., NEW.index("emo_happy")] = 1.0  # the new channel has weights to learn: zero now, so no effect yet
        assert torch.allclose(want, new(x, t, dataclasses.replace(cond, motion=wide)), atol=1e-10)
    with pytest.raises(Exception, match="drops channels"):
        widen_track(old.state_dict(), OLD, ("jaw_open",))


def test_speech_settings_give_the_track_layout_a_dit_takes_on(tmp_path):
    cfg = micro(motion_channels=NEW, speech_caption_buckets=16)
    model = DiT(cfg)
    path = save_speech(tmp_path / "speech.safetensors", model.speech_motion, cfg, {})
    got = speech_settings(path)
    assert got["motion_channels"] == NEW and got["speech_caption_buckets"] == 16
    assert DiT(dataclasses.replace(micro(motion_channels=OLD), **got)).cfg.motion_channels == NEW


def test_only_the_predicted_channels_come_from_audio():
    from lpm.training.base_batches import WindowSampler

    sampler = WindowSampler.__new__(WindowSampler)  # the mask alone: no clips needed
    sampler.predicted_motion, sampler.motion_channels = 1.0, NEW
    sampler.predicted_channels = ("jaw_open",)
    mask = sampler.motion_from_audio(np.random.default_rng(0), 3)
    assert mask.shape == (3, len(NEW)) and mask[:, 0].all() and not mask[:, 1:].any()
    sampler.predicted_channels = ()
    assert sampler.motion_from_audio(np.random.default_rng(0), 3).shape == (3,)
    # the DiT takes a per-channel mask: the true track where it is False
    model = make_model(micro(motion_channels=OLD, motion_spatial=True))
    x, t, cond = make_inputs(model)
    true = torch.randn(1, x.shape[1], len(OLD), dtype=x.dtype)
    with torch.no_grad():
        predicted = model.predict_motion(cond, 0, x.shape[1])
        every = torch.ones(1, len(OLD), dtype=torch.bool)
        none = torch.zeros(1, len(OLD), dtype=torch.bool)
        mixed = none.clone()
        mixed[0, 0] = True
        run = lambda m: model(x, t, dataclasses.replace(cond, motion=true, motion_from_audio=m))  # noqa: E731
        assert torch.allclose(run(every), model(x, t, dataclasses.replace(cond, motion=predicted)))
        assert torch.allclose(run(none), model(x, t, dataclasses.replace(cond, motion=true)))
        half = true.clone()
        half[..., 0] = predicted[..., 0]
        assert torch.allclose(run(mixed), model(x, t, dataclasses.replace(cond, motion=half)))
