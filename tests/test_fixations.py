"""The gaze fixation reading: holds between saccades, blinks bridged, the rule fitted on constructed readings."""

import numpy as np

from lpm.eval.fixations import GAZE, LIDS, FixationRule, fit_fixation_rule, fixation_gaze, gaze_r, saccade_steps
from lpm.world.motion import NUM_MOTION


def held_gaze(rng: np.random.Generator, frames: int = 96) -> np.ndarray:
    """True motion whose gaze holds 12-30 frames at random targets (x and y jump together, as the world's do)."""
    motion = np.zeros((frames, NUM_MOTION), np.float32)
    f = 0
    while f < frames:
        hold = int(rng.integers(12, 31))
        motion[f: f + hold, GAZE] = rng.uniform([-0.6, -0.3], [0.6, 0.4])
        f += hold
    return motion


def noisy_reading(rng: np.random.Generator, true: np.ndarray, sigma_y: float = 0.15) -> np.ndarray:
    """A reading: gaze_x nearly exact, gaze_y under heavy per-frame noise, a blink whose gaze reads as junk."""
    read = true.copy()
    read[:, GAZE[0]] += rng.normal(0, 0.03, len(read))
    read[:, GAZE[1]] += rng.normal(0, sigma_y, len(read))
    read[40:44, LIDS] = 1.0
    read[40:44, GAZE[1]] = -1.0
    return read


def test_saccade_steps_peak_at_the_jump():
    gaze = np.zeros((40, 2))
    gaze[17:] = [0.5, 0.2]
    step = saccade_steps(gaze, 5)
    assert step.argmax() == 17
    assert np.isclose(step[17], np.hypot(0.5, 0.2))
    assert step[:12].max() < 1e-9 and step[23:].max() < 1e-9


def test_a_clean_hold_pattern_is_kept_exactly():
    rng = np.random.default_rng(0)
    true = held_gaze(rng)
    np.testing.assert_allclose(fixation_gaze(true), true, atol=1e-6)


def test_fixations_raise_the_gaze_r_of_a_noisy_reading_and_leave_other_channels():
    rng = np.random.default_rng(1)
    truths = [held_gaze(rng) for _ in range(8)]
    reads = [noisy_reading(rng, t) for t in truths]
    x0, y0 = gaze_r(reads, truths)
    held = [fixation_gaze(r, FixationRule(blink=0.5, window=5, threshold=0.1)) for r in reads]
    x1, y1 = gaze_r(held, truths)
    assert y1 > y0 + 0.1 and x1 >= x0 - 0.01
    other = [i for i in range(NUM_MOTION) if i not in GAZE]
    for r, h in zip(reads, held):
        np.testing.assert_array_equal(r[:, other], h[:, other])


def test_blink_frames_do_not_leak_into_the_fixation():
    rng = np.random.default_rng(2)
    true = np.zeros((96, NUM_MOTION), np.float32)
    true[:, GAZE] = [0.3, 0.2]
    read = noisy_reading(rng, true, sigma_y=0.0)
    held = fixation_gaze(read, FixationRule(blink=0.5, window=5, threshold=0.1))
    np.testing.assert_allclose(held[:, GAZE[1]], 0.2, atol=1e-6)
    # with the blink threshold above any lid reading, the junk gaze stays: a cut or a shifted median shows it
    kept = fixation_gaze(read, FixationRule(blink=2.0, window=5, threshold=0.1))
    assert np.abs(kept[:, GAZE[1]] - 0.2).max() > 0.5


def test_edge_cases_keep_the_reading():
    one = np.ones((1, NUM_MOTION), np.float32)
    np.testing.assert_array_equal(fixation_gaze(one), one)
    shut = np.zeros((10, NUM_MOTION), np.float32)
    shut[:, LIDS] = 1.0
    shut[:, GAZE[1]] = np.linspace(-1, 1, 10)
    np.testing.assert_array_equal(fixation_gaze(shut), shut)


def test_the_fit_prefers_a_rule_that_bridges_blinks():
    rng = np.random.default_rng(3)
    truths = [held_gaze(rng) for _ in range(6)]
    reads = [noisy_reading(rng, t) for t in truths]
    rule, rows = fit_fixation_rule(reads, truths, blinks=(0.5, 2.0), windows=(5,), thresholds=(0.1,))
    assert rule.blink == 0.5
    assert rows[0]["rule"] is None and len(rows) == 3
    assert max(r["gaze_y_r"] for r in rows[1:]) > rows[0]["gaze_y_r"]
