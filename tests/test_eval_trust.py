"""The bench's trust machinery on constructed inputs: bootstrap intervals, pooled metrics, identity degradations
and their check, the state reader, the default case set's stamp."""

import json

import numpy as np
import pytest
import torch

from lpm.eval import metrics as M
from lpm.eval.identity_check import DEGRADATIONS, check_identity, degrade, roc_auc
from lpm.eval.intervals import bootstrap_intervals, half_width
from lpm.eval.scoring import ClipScore, Moments, fid_from_moments, metric_intervals, pooled_metrics
from lpm.eval.state_train import StateTrainConfig, load_state_reader, train_state_net
from lpm.eval.states import STATE_CHANNELS, ReadingNoise, StateReader
from lpm.world.motion import MOTION_INDEX, NUM_MOTION


def test_bootstrap_interval_of_a_mean_matches_theory_and_is_seeded():
    x = np.random.default_rng(1).normal(size=400)

    def stat(idx):
        return {"mean": x[idx].mean(), "never": None}

    ci = bootstrap_intervals(len(x), stat, samples=2000, seed=3)
    lo, hi = ci["mean"]
    assert lo < x.mean() < hi
    # The normal-theory 95 % interval of a mean: +-1.96 sd / sqrt(n).
    assert half_width(ci["mean"]) == pytest.approx(1.96 * x.std() / np.sqrt(len(x)), rel=0.1)
    assert ci["never"] is None  # undefined in every resample
    assert bootstrap_intervals(len(x), stat, samples=2000, seed=3) == ci
    assert bootstrap_intervals(len(x), stat, samples=2000, seed=4) != ci
    assert bootstrap_intervals(1, stat) == {}  # one clip: no spread to measure
    assert bootstrap_intervals(5, lambda idx: {"c": 2.0})["c"] == (2.0, 2.0)


def _score(speak_true, speak_pred, states_pred, states_true, sim, emotion_hit=True, feats=None, truth_feats=None):
    n = len(states_true)
    return ClipScore(np.asarray(speak_pred, np.float32), np.asarray(speak_true, np.float32), None, None,
                     np.zeros(4, np.float32), M.EventMatch(1, 0, 0, []), np.asarray(states_pred),
                     np.asarray(states_true), 1.0, emotion_hit, np.full(n, sim, np.float32),
                     np.full(n, sim < 0.5), feats, truth_feats)


def test_pooled_metrics_and_their_intervals_over_clips():
    rng = np.random.default_rng(0)
    good = [_score(t, t, np.zeros(10, int), np.zeros(10, int), 0.9) for t in rng.random((6, 10))]
    m = pooled_metrics(good)
    assert m["lipsync_r"] == pytest.approx(1.0) and m["state_acc"] == 1.0 and m["identity_low_share"] == 0.0
    ci = metric_intervals(good, samples=200)
    assert ci["lipsync_r"] == pytest.approx((1.0, 1.0)) and ci["state_acc"] == (1.0, 1.0)
    # Half the clips read their states wrong: the interval spans the clip-to-clip spread, around the point value.
    mixed = good[:3] + [_score(t, t, np.ones(10, int), np.zeros(10, int), 0.1, False) for t in rng.random((3, 10))]
    m, ci = pooled_metrics(mixed), metric_intervals(mixed, samples=400)
    assert m["state_acc"] == 0.5 and m["identity_low_share"] == 0.5 and m["text_emotion_acc"] == 0.5
    lo, hi = ci["state_acc"]
    assert lo < 0.5 < hi and hi - lo > 0.3
    # Lip r defined by one clip only (the others have no speech): no interval, not a point that looks precise.
    silent = [_score([], [], np.zeros(10, int), np.zeros(10, int), 0.9) for _ in range(4)]
    one = metric_intervals(good[:1] + silent, samples=100)
    assert one["lipsync_r"] is None and one["state_acc"] == (1.0, 1.0)
    # More clips of the same kind narrow it.
    many = mixed * 6
    assert half_width(metric_intervals(many, samples=400)["state_acc"]) < half_width(ci["state_acc"])


def test_fid_from_per_clip_sums_equals_the_direct_fid():
    rng = np.random.default_rng(0)
    a = [rng.normal(size=(30, 5)) for _ in range(3)]
    b = [rng.normal(0.5, 1.3, size=(30, 5)) for _ in range(3)]
    direct = M.frechet_distance(np.concatenate(a), np.concatenate(b))
    moments = fid_from_moments([Moments.of(x) for x in a], [Moments.of(x) for x in b])
    assert moments == pytest.approx(direct, rel=1e-6)
    scores = [_score([0, 1], [0, 1], [0], [0], 1.0, feats=x, truth_feats=y) for x, y in zip(a, b)]
    ci = metric_intervals(scores, with_fid=True, samples=50)
    assert ci["world_fid"][0] <= ci["world_fid"][1] and "world_fid" not in metric_intervals(scores, samples=50)


def test_roc_auc():
    assert roc_auc(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 1.0
    assert roc_auc(np.array([0.0, 1.0]), np.array([2.0, 3.0])) == 0.0
    assert roc_auc(np.array([1.0, 1.0]), np.array([1.0])) == 0.5  # ties count half
    assert roc_auc(np.array([1.0, 3.0]), np.array([2.0])) == 0.5


def _faces(seed: int, n: int = 4, res: int = 64) -> np.ndarray:
    """Frames with a sharp, character-specific checkerboard in the face box on a flat background."""
    rng = np.random.default_rng(seed)
    x = np.full((n, res, res, 3), 120, np.uint8)
    board = (np.indices((res, res)).sum(0) // rng.integers(2, 4)) % 2  # (res, res)
    colour = rng.integers(0, 256, 3)
    x[:, 10:42, 13:51] = (board[10:42, 13:51, None] * colour).astype(np.uint8)
    return x


def test_degradations():
    a, b = _faces(1), _faces(2)
    rows, cols = slice(10, 42), slice(13, 51)  # face box of FACE_CROP at 64 px
    blur = degrade(a, "blur")
    assert blur.shape == a.shape and blur.dtype == np.uint8
    assert np.abs(np.diff(blur.astype(float), axis=2)).mean() < 0.5 * np.abs(np.diff(a.astype(float), axis=2)).mean()
    swap = degrade(a, "swap", b)
    assert (swap[:, rows, cols] == b[:, rows, cols]).all() and (swap[:, :5] == a[:, :5]).all()
    smear = degrade(a, "smear")
    assert (smear[:, :5] == a[:, :5]).all() and not (smear[:, rows, cols] == a[:, rows, cols]).all()
    assert (degrade(a, "smear", strength=2.0) != smear).any()
    with pytest.raises(ValueError, match="another character"):
        degrade(a, "swap")
    with pytest.raises(ValueError, match="unknown degradation"):
        degrade(a, "melt")


def test_identity_check_separates_a_damage_sensitive_embedding_from_a_blind_one():
    clips = [("photo", _faces(s, 1)[0], _faces(s, 8)) for s in (1, 2, 3)]

    def sharp(x):  # fine-detail features of the face box: damage changes them
        f = x[:, 10:42, 13:51].astype(np.float32).reshape(len(x), -1)
        f = f - f.mean(1, keepdims=True)
        return f / (np.linalg.norm(f, axis=1, keepdims=True) + 1e-6)

    def blind(x):  # the mean colour of the whole frame: blind to damage
        f = x.astype(np.float32).mean((1, 2))
        return f / np.linalg.norm(f, axis=1, keepdims=True)

    good = check_identity(sharp, clips, "val", stride=1)
    assert good.auc == 1.0 and set(good.degraded) == set(DEGRADATIONS)
    assert all(mean < good.truth_mean for mean, _ in good.degraded.values()) and good.ranks()
    bad = check_identity(blind, clips, "val", stride=1)
    assert not bad.ranks()
    assert check_identity(sharp, clips[:1], "val") is None  # no second character of the style


def _tracks(state: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """Constructed motion: speech moves the jaw, listening holds the gaze at 0, idling wanders it."""
    m = np.zeros((n, NUM_MOTION), np.float32)
    t = np.arange(n)
    if state == 0:
        m[:, MOTION_INDEX["jaw_open"]] = 0.4 + 0.4 * np.sin(t * rng.uniform(0.8, 1.2))
    away = rng.choice([-1, 1], n // 12 + 1) * rng.uniform(0.4, 0.6, n // 12 + 1)
    gx = rng.normal(0, 0.03, n) if state != 2 else np.repeat(away, 12)[:n]
    m[:, MOTION_INDEX["gaze_x"]] = gx
    return m


def test_state_reader_learns_constructed_states_and_round_trips(tmp_path):
    from lpm.data.clip import STATE_NAMES
    from lpm.eval.states import STATE_KIND
    from lpm.training.checkpoint import save_checkpoint

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    # Clips of 48 frames: the first half one state, the second another.
    motion, states = [], []
    for _ in range(60):
        a, b = rng.integers(0, 3, 2)
        motion.append(np.concatenate([_tracks(a, 24, rng), _tracks(b, 24, rng)]))
        states.append(np.repeat([a, b], 24))
    motion, states = np.stack(motion), np.stack(states)
    noise = ReadingNoise(np.ones(len(STATE_CHANNELS), np.float32), np.zeros(len(STATE_CHANNELS), np.float32),
                         np.full(len(STATE_CHANNELS), 0.02, np.float32))
    net = train_state_net(motion, states, noise, StateTrainConfig(steps=200, batch=60), log=lambda *_: None)
    reader = StateReader(net)
    test = [(_tracks(s, 48, rng), s) for s in (0, 1, 2) for _ in range(3)]
    acc = np.mean([(reader.predict(m)[8:-8] == s).mean() for m, s in test])
    assert acc > 0.9, acc
    assert reader.predict(np.zeros((0, NUM_MOTION), np.float32)).shape == (0,)
    assert len(STATE_NAMES) == 3
    import dataclasses

    save_checkpoint(tmp_path / "s.safetensors", net.state_dict(),
                    {"train": {}, "net": dataclasses.asdict(net.cfg)}, STATE_KIND, {"accuracy": {"x": 1}})
    loaded, meta = load_state_reader(tmp_path / "s.safetensors")
    assert (loaded.predict(test[0][0]) == reader.predict(test[0][0])).all() and meta["extra"]["accuracy"]["x"] == 1


def test_reading_noise_fit_recovers_gain_offset_and_sigma():
    rng = np.random.default_rng(0)
    true = [rng.normal(size=(500, NUM_MOTION)).astype(np.float32) for _ in range(4)]
    k = MOTION_INDEX["gaze_x"]
    read = []
    for t in true:
        r = t.copy()
        r[:, k] = 0.5 * t[:, k] + 0.1 + rng.normal(0, 0.2, len(t))
        read.append(r)
    noise = ReadingNoise.fit(read, true)
    c = STATE_CHANNELS.index("gaze_x")
    assert noise.gain[c] == pytest.approx(0.5, abs=0.02) and noise.offset[c] == pytest.approx(0.1, abs=0.02)
    assert noise.sigma[c] == pytest.approx(0.2, abs=0.02)
    j = STATE_CHANNELS.index("jaw_open")
    assert noise.gain[j] == pytest.approx(1.0) and noise.sigma[j] == pytest.approx(0.0, abs=1e-5)
    fake = noise.apply(true[0], rng)
    assert np.std(fake[:, k] - 0.5 * true[0][:, k] - 0.1) == pytest.approx(0.2, rel=0.6)


def test_default_case_set_is_stamped_resumed_and_checked(tmp_path, monkeypatch):
    import lpm.eval.bench as bench
    from lpm.data.clip import read_manifest
    from lpm.errors import LpmError

    recipe = {"version": 1, "clips": 2, "seconds": 0.5, "res": 64, "seed": 0}
    monkeypatch.setattr(bench, "DEFAULT_DATA_RECIPE", recipe)
    root = tmp_path / "world"
    bench.ensure_default_data(root, log=lambda *a: None)
    assert len(read_manifest(root)) == 2 and json.loads((root / bench.CASE_SET_STAMP).read_text()) == recipe
    # A killed build (no stamp, one clip unfinished) resumes.
    (root / bench.CASE_SET_STAMP).unlink()
    first = read_manifest(root)[0]["id"]
    (root / first / "meta.json").unlink()
    logs = []
    bench.ensure_default_data(root, log=logs.append)
    assert "1 of 2 clips missing" in logs[0] and (root / first / "meta.json").is_file()
    assert (root / bench.CASE_SET_STAMP).is_file()
    # Another version's case set is refused with the difference named.
    monkeypatch.setattr(bench, "DEFAULT_DATA_RECIPE", {**recipe, "version": 2})
    with pytest.raises(LpmError, match="move .* away"):
        bench.ensure_default_data(root)
    # So is another data set at the default path.
    monkeypatch.setattr(bench, "DEFAULT_DATA_RECIPE", {**recipe, "clips": 1})
    (root / bench.CASE_SET_STAMP).unlink()
    with pytest.raises(LpmError, match="does not plan"):
        bench.ensure_default_data(root)


def test_listen_case_set_holds_listening_clips_of_its_split_and_styles(tmp_path):
    import lpm.eval.bench as bench
    from lpm.data.clip import read_manifest
    from lpm.eval import LISTEN_DATA, LISTEN_DATA_RECIPE
    from lpm.eval.suites import SUITE_MODEL_CLIPS, select_clips

    assert bench.default_data("listen") == LISTEN_DATA and bench.default_data("quick") != LISTEN_DATA
    recipe = {**LISTEN_DATA_RECIPE, "clips": 3, "seconds": 0.5, "res": 64, "styles": ["photo", "anime"]}
    root = tmp_path / "listen"
    logs = []
    bench.ensure_default_data(root, log=logs.append, recipe=recipe)
    assert "--mode listen" in logs[0] and "--split val" in logs[0]
    rows = read_manifest(root)
    assert len(rows) == 3 and {r["split"] for r in rows} == {"val"} and {r["style"] for r in rows} <= {"photo", "anime"}
    assert all(json.loads((root / r["path"] / "meta.json").read_text())["mode"] == "listen" for r in rows)
    assert json.loads((root / bench.CASE_SET_STAMP).read_text()) == recipe
    assert [r["id"] for r in select_clips(root, "listen")] == [r["id"] for r in rows]
    assert SUITE_MODEL_CLIPS["listen"]["*"] >= LISTEN_DATA_RECIPE["clips"]  # every clip for every model but the Base


def test_calibration_readings_are_cached_per_reader(tmp_path):
    from lpm.eval.state_train import reader_tag

    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    a.write_bytes(b"probe v1")
    b.write_bytes(b"face v1")
    tag = reader_tag(a, b)
    assert tag == reader_tag(a, b) and tag != reader_tag(a, None) and tag.startswith("_")
    b.write_bytes(b"face v2")  # a retrained reader: its readings are redone
    assert reader_tag(a, b) != tag
