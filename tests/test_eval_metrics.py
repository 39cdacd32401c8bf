"""Bench metrics on synthetic tracks with known answers."""

import numpy as np
import pytest

from lpm.eval import metrics as M


def test_lipsync_r_and_mask():
    t = np.linspace(0, 4, 96)
    truth = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)
    assert M.lipsync_r(truth * 0.7 + 0.1, truth) == pytest.approx(1.0)
    mask = np.zeros(96, bool)
    mask[:48] = True
    noisy = truth.copy()
    noisy[48:] = 0.0  # outside the mask: ignored
    assert M.lipsync_r(noisy, truth, mask) == pytest.approx(1.0)
    assert np.isnan(M.lipsync_r(np.zeros(96), truth))


@pytest.mark.parametrize("shift", [-3, 0, 2, 5])
def test_av_offset_of_shifted_signal(shift):
    rng = np.random.default_rng(0)
    truth = np.convolve(rng.random(400), np.ones(3) / 3, mode="same")  # broadband: one clear peak
    pred = np.roll(truth, shift)  # pred[t + shift] == truth[t]: late by `shift`
    assert M.av_offset_frames(pred, truth) == shift


def test_av_offset_of_shifted_sine():
    t = np.arange(240)
    truth = np.sin(2 * np.pi * t / 40)  # period 40 > 2 * max lag: unambiguous
    assert M.av_offset_frames(np.sin(2 * np.pi * (t - 4) / 40), truth) == 4
    assert M.av_offset_frames(np.zeros(240), truth) is None


def test_silent_mouth_closed():
    jaw = np.array([0.0, 0.05, 0.5, 0.9, 0.1])
    silent = np.array([True, True, True, False, True])
    assert M.silent_mouth_closed(jaw, silent) == pytest.approx(3 / 4)
    assert np.isnan(M.silent_mouth_closed(jaw, np.zeros(5, bool)))


def _nod_track(n: int, onsets: list[int], depth: float = 8.0) -> np.ndarray:
    x = np.zeros(n)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(11) / 10)
    for o in onsets:
        x[o: o + 11] -= depth * window[: n - o]
    return x


def test_detect_nods_and_brows():
    n = 240
    pitch = _nod_track(n, [30, 120]) + 0.3 * np.sin(np.arange(n) / 20)  # slow drift does not count
    brow = np.zeros(n)
    brow[180:202] = 0.75
    ev = M.detect_reactions({"head_pitch": pitch, "brow_raise": brow})
    assert [e.type for e in ev] == ["nod", "nod", "brow_raise"]
    assert np.abs(np.array([e.frame for e in ev]) - [30, 120, 180]).max() <= 2  # onsets within 2 frames
    allowed = np.ones(n, bool)
    allowed[100:140] = False  # e.g. speaking frames
    assert [e.type for e in M.detect_reactions({"head_pitch": pitch}, allowed)] == ["nod"]


def test_double_nod_is_one_event():
    pitch = _nod_track(200, [50]) + _nod_track(200, [61], 5.6)
    assert len(M.detect_reactions({"head_pitch": pitch})) == 1


def test_match_events_f1():
    truth = [M.Event("nod", 10, 2), M.Event("nod", 50, 40), M.Event("brow_raise", 90, 80)]
    det = [M.Event("nod", 13), M.Event("brow_raise", 52), M.Event("brow_raise", 91), M.Event("smile", 150)]
    m = M.match_events(truth, det, tolerance=4)
    assert (m.true_positives, m.false_positives, m.false_negatives) == (2, 2, 1)
    assert m.f1 == pytest.approx(2 * 2 / (2 * 2 + 2 + 1))
    assert M.reaction_delays_s(m).tolist() == pytest.approx([11 / 24, 11 / 24])
    assert np.isnan(M.match_events([], []).f1)
    total = m + M.match_events([M.Event("nod", 5)], [M.Event("nod", 5)])
    assert total.true_positives == 3


def test_frechet_distance():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 4))
    assert M.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    shift = np.array([1.0, 2.0, 0.0, 0.0])
    assert M.frechet_distance(a + shift, a) == pytest.approx(5.0, rel=1e-6)
    # Scaling one axis by 2: (sigma_a - sigma_b)^2 on that axis = 1.
    b = a * np.array([2.0, 1.0, 1.0, 1.0])
    assert M.frechet_distance(b, a) == pytest.approx(1.0, rel=0.05)


def test_stream_latencies_and_drift():
    starts, ready = M.chunk_times([12, 12], [12 + 2, 24 + 2])  # 0.5 s chunks, 2 frames of lookahead
    lat = M.stream_latencies(np.array([0.05, 0.05]), starts, ready)
    assert lat.tolist() == pytest.approx([0.5 + 2 / 24 + 0.05] * 2)
    starts, ready = M.chunk_times([12, 12, 12], [12, 24, 36])
    slow = M.stream_latencies(np.array([1.0, 1.0, 1.0]), starts, ready)  # compute > real time: queueing grows
    assert slow.tolist() == pytest.approx([1.5, 2.0, 2.5])
    starts, ready = M.chunk_times([12, 12], [24, 24])  # offline: the whole clip's audio before any frame
    assert M.stream_latencies(np.array([0.3, 0.0]), starts, ready).tolist() == pytest.approx([1.3, 0.8])
    assert M.drift_per_minute(np.array([0.9, 0.88, 0.86])) == pytest.approx(-0.02)
    assert M.angle_error_deg(np.array([179.0]), np.array([-179.0])) == pytest.approx(2.0)
