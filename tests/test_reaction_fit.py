"""The reaction rules fitted to a reading: constructed tracks where the right thresholds are known."""

import dataclasses

import numpy as np
import pytest

from lpm.eval import metrics as M
from lpm.eval.reaction_fit import (
    CalibrationClips,
    count_type,
    fit_reaction_rules,
    reaction_mask,
    rules_from_json,
    rules_to_json,
)
from lpm.world.motion import MOTION_INDEX, NUM_MOTION

FRAMES, LISTEN = 96, 1


def bump(frames: int, onset: int, length: int, height: float) -> np.ndarray:
    """A raised-cosine bump of ``height`` starting at ``onset``."""
    x = np.zeros(frames)
    t = np.arange(length)
    x[onset: onset + length] = height * 0.5 * (1 - np.cos(2 * np.pi * t / length))[: frames - onset]
    return x


def clips_with(channel: str, kind: str, height: float, length: int, gain: float, noise: float,
               n: int = 12, seed: int = 0) -> CalibrationClips:
    """``n`` listening clips; every other one has one reaction of ``kind``, read at ``gain`` with frame noise."""
    rng = np.random.default_rng(seed)
    read = np.zeros((n, FRAMES, NUM_MOTION), np.float32)
    events = []
    for c in range(n):
        onset = int(rng.integers(20, 50))
        true = bump(FRAMES, onset, length, height) if c % 2 == 0 else np.zeros(FRAMES)
        read[c, :, MOTION_INDEX[channel]] = gain * true + noise * rng.standard_normal(FRAMES)
        events.append([M.Event(kind, onset)] if c % 2 == 0 else [])
    return CalibrationClips(read, np.full((n, FRAMES), LISTEN), events)


def test_a_reading_at_reduced_gain_gets_a_lower_threshold():
    # Brow raises of 0.75 read at 0.3x: 0.22 at the peak, under the motion rule's 0.3, so all are missed.
    clips = clips_with("brow_raise", "brow_raise", 0.75, 22, 0.3, 0.005)
    assert count_type(clips, "brow_raise", M.BUMP_RULES["brow_raise"], 8)[0] == 0
    rules, report = fit_reaction_rules(clips, 8)
    assert report["brow_raise"]["f1_base"] == 0.0
    assert report["brow_raise"]["f1"] == 1.0
    assert rules["brow_raise"].threshold < 0.22 < M.BUMP_RULES["brow_raise"].threshold
    # Types without any true event keep the motion rule.
    assert rules["nod"] == M.BUMP_RULES["nod"] and report["nod"]["events"] == 0


def test_noise_that_fires_the_motion_rule_gets_a_higher_threshold():
    # Nods of 9 degrees read faithfully, with frame noise of 1.8 degrees that crosses 2.5 degrees now and then.
    clips = clips_with("head_pitch", "nod", -9.0, 11, 1.0, 1.8, n=16, seed=3)
    before = count_type(clips, "nod", M.BUMP_RULES["nod"], 8)
    assert before[1] > 0  # false alarms
    rules, report = fit_reaction_rules(clips, 8)
    assert report["nod"]["f1"] > report["nod"]["f1_base"]
    assert rules["nod"].threshold > M.BUMP_RULES["nod"].threshold or rules["nod"].min_frames > 3


def test_reaction_mask_excludes_speech_and_the_clip_end():
    states = np.array([0, 0, 1, 1, 2, 2, 1, 1, 1, 1])
    assert reaction_mask(states, 3).tolist() == [False, False, True, True, True, True, True, True, False, False]


def test_rules_round_trip_and_bad_rules_are_named():
    assert rules_from_json(rules_to_json(M.BUMP_RULES)) == M.BUMP_RULES
    with pytest.raises(ValueError, match="unknown reaction type 'wink'"):
        rules_from_json({"wink": rules_to_json(M.BUMP_RULES)["nod"]})
    bad = rules_to_json(M.BUMP_RULES)["nod"]
    del bad["threshold"]
    with pytest.raises(ValueError, match="'nod'.*threshold"):
        rules_from_json({"nod": bad})


def test_calibration_clips_must_agree():
    with pytest.raises(ValueError, match="disagree"):
        CalibrationClips(np.zeros((2, 10, NUM_MOTION)), np.zeros((2, 9)), [[], []])


def test_instruments_take_the_state_readers_rules_and_name_a_bad_one(tmp_path):
    from lpm.errors import LpmError
    from lpm.eval.suites import DEFAULT_STATES, load_instruments
    from lpm.training.checkpoint import load_checkpoint, save_checkpoint

    weights, meta = load_checkpoint(DEFAULT_STATES)
    fitted = dict(M.BUMP_RULES)
    fitted["nod"] = dataclasses.replace(M.BUMP_RULES["nod"], threshold=M.BUMP_RULES["nod"].threshold * 1.5)
    good = save_checkpoint(tmp_path / "good.safetensors", weights, meta["config"], meta["kind"],
                           {**meta["extra"], "reaction_rules": rules_to_json(fitted)})
    assert load_instruments(states_path=good).reaction_rules == fitted
    old = {k: v for k, v in meta["extra"].items() if k != "reaction_rules"}
    older = save_checkpoint(tmp_path / "old.safetensors", weights, meta["config"], meta["kind"], old)
    assert load_instruments(states_path=older).reaction_rules == M.BUMP_RULES
    bad = save_checkpoint(tmp_path / "bad.safetensors", weights, meta["config"], meta["kind"],
                          {**meta["extra"], "reaction_rules": {"wink": rules_to_json(M.BUMP_RULES)["nod"]}})
    with pytest.raises(LpmError, match="bad.safetensors.*wink"):
        load_instruments(states_path=bad)
