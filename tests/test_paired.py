"""Paired differences between two systems on the same clips (``lpm.eval.paired``) and their place in the report."""

from types import SimpleNamespace

import numpy as np
import pytest

from lpm.eval import metrics as M
from lpm.eval.paired import paired_differences, paired_report
from lpm.eval.report import to_markdown
from lpm.eval.scoring import ClipScore, metric_intervals


def _score(speak_pred, speak_true, sim, feats=None, truth_feats=None, emotion_hit=True):
    n = 10
    return ClipScore(np.asarray(speak_pred, np.float32), np.asarray(speak_true, np.float32), None, None,
                     np.zeros(4, np.float32), M.EventMatch(1, 0, 0, []), np.zeros(n, int), np.zeros(n, int), 1.0,
                     emotion_hit, np.full(n, sim, np.float32), np.full(n, sim < 0.5), feats, truth_feats)


def test_identical_systems_differ_by_nothing():
    rng = np.random.default_rng(0)
    a = [_score(rng.random(10), rng.random(10), s) for s in rng.uniform(0.5, 1.0, 8)]
    d = paired_differences(a, a, samples=200)
    assert d["lipsync_r"].value == 0 and (d["lipsync_r"].low, d["lipsync_r"].high) == (0, 0)
    assert not any(x.differs for x in d.values())


def test_shared_difficulty_cancels_in_the_paired_interval():
    """Clips differ a lot in identity similarity (a hard face is hard for both systems); one system is better by
    0.01 on every clip. Each system's own interval spans the clip spread, so they overlap; the paired interval of
    the difference is tight around 0.01 and excludes 0."""
    rng = np.random.default_rng(1)
    sims = rng.uniform(0.6, 0.95, 12)
    true = [rng.random(10) for _ in sims]
    base = [_score(t, t, s) for t, s in zip(true, sims)]
    better = [_score(t, t, s + 0.01) for t, s in zip(true, sims)]
    lo_b, hi_b = metric_intervals(base, samples=300)["identity_sim"]
    lo_s, hi_s = metric_intervals(better, samples=300)["identity_sim"]
    assert lo_s < hi_b  # the unpaired intervals overlap
    d = paired_differences(better, base, samples=300)["identity_sim"]
    assert d.value == pytest.approx(0.01, abs=1e-5) and d.differs
    assert d.low == pytest.approx(0.01, abs=1e-4) and d.high == pytest.approx(0.01, abs=1e-4)


def test_a_real_lip_sync_gap_is_found_and_noise_is_not():
    rng = np.random.default_rng(2)
    true = [rng.random(40) for _ in range(10)]
    synced = [_score(t, t, 0.9) for t in true]
    random = [_score(rng.random(40), t, 0.9) for t in true]
    d = paired_differences(synced, random, samples=300)["lipsync_r"]
    assert d.value > 0.8 and d.differs and d.low > 0.5
    # Two draws of the same noisy system: a difference, but not one the interval vouches for.
    other = [_score(rng.random(40), t, 0.9) for t in true]
    assert not paired_differences(other, random, samples=300)["lipsync_r"].differs


def test_world_fid_difference_on_the_same_truth():
    rng = np.random.default_rng(3)
    truth = [rng.normal(size=(30, 4)) for _ in range(8)]
    close = [_score(rng.random(10), rng.random(10), 0.9, t + rng.normal(scale=0.1, size=t.shape), t) for t in truth]
    far = [_score(rng.random(10), rng.random(10), 0.9, t + 2.0, t) for t in truth]
    d = paired_differences(close, far, with_fid=True, samples=100)["world_fid"]
    assert d.value < -10 and d.differs
    assert "world_fid" not in paired_differences(close, far, samples=100)


def test_errors_and_too_few_clips():
    a = [_score(np.arange(5.0), np.arange(5.0), 0.9)] * 3
    with pytest.raises(ValueError, match="same clips: 3 vs 2"):
        paired_differences(a, a[:2])
    assert paired_differences(a[:1], a[:1]) == {}
    # Two clips define the metric: a difference, but no interval (scoring's MIN_DEFINING_CLIPS).
    d = paired_differences(a[:2], a[:2])["lipsync_r"]
    assert d.value == 0 and d.low is None and not d.differs


def test_report_pairs_only_shared_clips_and_marks_differences():
    rng = np.random.default_rng(4)
    true = {f"c{i}": rng.random(20) for i in range(8)}
    def result(name, noise, clips):
        scores = {c: _score(true[c] + noise * rng.normal(size=20), true[c], 0.9) for c in clips}
        return SimpleNamespace(name=name, available=True, scores={"speaking": scores})
    online = result("online", 2.0, list(true))
    arm = result("arm", 0.0, list(true)[:6])  # rated 6 of the 8 clips
    truth = result("truth", 0.0, list(true))
    report = paired_report([truth, online, arm], "online")
    assert set(report["systems"]) == {"arm"} and report["systems"]["arm"]["speaking"]["clips"] == 6
    value, low, high = report["systems"]["arm"]["speaking"]["lipsync_r"]
    assert value > 0 and low > 0
    assert paired_report([truth, arm], "online") == {}
    md = to_markdown({"suite": "quick", "wall_s": 1.0, "machine": {}, "failed_validation": {}, "systems": [],
                      "instruments": {"probe": {}, "identity": {}}, "validation": [], "paired": report})
    assert "## Paired differences against `online`" in md
    assert f"**{value:+.3f} ({low:+.3f}, {high:+.3f})**" in md
