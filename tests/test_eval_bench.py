"""lpm bench end to end on a tiny world data set with tiny (barely trained) instruments; systems in isolation."""

import json

import numpy as np
import pytest

from lpm.cli import main
from lpm.eval.long import build_session
from lpm.eval.suites import METRIC_KEYS
from lpm.eval.systems import (
    ClipInputs,
    ModelSystem,
    StaticSystem,
    TraditionalSystem,
    caption_emotion,
    make_systems,
    timed_stream,
)
from lpm.eval.train import FACE_KIND, IDENTITY_KIND, PROBE_KIND, InstrumentTrainConfig, train_instrument
from lpm.world.identity import sample_identity
from lpm.world.synth import ClipSpec, synth

RES = 64


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    specs = [ClipSpec(0, i, split, style, secs, RES, mode) for i, (split, style, mode, secs) in enumerate(
        [("train", "photo", "conversation", 2.0), ("val", "photo", "speak", 3.0), ("val", "photo", "listen", 3.0),
         ("zeroshot", "sketch", "speak", 2.0)])]
    synth(root / "data", specs, workers=1, progress=False)
    cfg = InstrumentTrainConfig(train_identities=4, val_identities=2, zeroshot_identities=2, per_identity=2,
                                res=RES, steps=2, batch=4, identities_per_batch=2, threads=1)
    train_instrument(PROBE_KIND, root / "inst" / "probe", cfg, log=lambda *_: None)
    train_instrument(IDENTITY_KIND, root / "inst" / "identity", cfg, log=lambda *_: None)
    train_instrument(FACE_KIND, root / "inst" / "face", cfg, log=lambda *_: None)
    _tiny_state_reader(root / "inst" / "states.safetensors")
    return root


def _tiny_state_reader(path):
    """A barely trained state reader on a few in-memory world performances (no rendering)."""
    import dataclasses

    from lpm.eval.state_train import StateTrainConfig, train_state_net, world_performances
    from lpm.eval.states import STATE_CHANNELS, STATE_KIND, ReadingNoise
    from lpm.training.checkpoint import save_checkpoint

    motion, states = world_performances(2, seed=5, seconds=1.0)
    zeros = np.zeros(len(STATE_CHANNELS), np.float32)
    net = train_state_net(motion, states, ReadingNoise(zeros + 1, zeros, zeros + 0.01),
                          StateTrainConfig(steps=2, batch=2), log=lambda *_: None)
    save_checkpoint(path, net.state_dict(), {"train": {}, "net": dataclasses.asdict(net.cfg)}, STATE_KIND,
                    {"accuracy": {"calib_probe_tracks": 0.5, "calib_true_motion": 0.6, "calib_clips": 2}})


def _inputs(frames: int = 30) -> ClipInputs:
    rng = np.random.default_rng(0)
    n = frames * 16000 // 24
    speech = (rng.normal(size=n) * np.sin(np.linspace(0, 30, n)) ** 2 * 0.2).astype(np.float32)
    ref = np.full((RES, RES, 3), 200, np.uint8)
    return ClipInputs("x", "val", "photo", frames, speech, np.zeros(n, np.float32), {"global": ref},
                      "someone, quite happy, talking", 30.0, sample_identity(3, "photo"))


def test_systems_give_frames_and_reasons():
    inputs = _inputs()
    static = StaticSystem().generate(inputs)
    assert static.shape == (30, RES, RES, 3) and (static == 200).all()
    chunks = list(timed_stream(TraditionalSystem(), inputs, chunk_frames=12))
    assert [len(c) for c, _, _ in chunks] == [12, 12, 6] and all(s >= 0 for _, s, _ in chunks)
    assert [u for _, _, u in chunks] == [30, 30, 30]  # a short clip is analysed whole before its first frame
    assert ModelSystem("online", None).unavailable().startswith("no trained online checkpoint")
    assert [s.name for s in make_systems()] == ["truth", "traditional", "static", "base", "online"]
    assert caption_emotion("a cat, very sad, listening") == ("sad", 0.9)
    assert caption_emotion("a cat, calm and neutral, idle") == ("neutral", 0.0)


def test_long_session_script():
    session = build_session(0.1, seed=1, res=RES)
    f = session.inputs.num_frames
    assert f == 144 and session.truth.motion.shape == (f, 18) and session.truth.states.shape == (f,)
    assert session.inputs.self_audio.shape == (f * 16000 // 24,)


def test_bench_quick_writes_contract_report(tiny_world):
    out = tiny_world / "report"
    inst = tiny_world / "inst"
    rc = main(["bench", "--suite", "quick", "--data", str(tiny_world / "data"), "--out", str(out),
               "--probe", str(inst / "probe" / "model.safetensors"),
               "--identity", str(inst / "identity" / "model.safetensors"), "--minutes", "0.05",
               "--states", str(inst / "states.safetensors"), "--face", str(inst / "face" / "model.safetensors"),
               "--no-default-checkpoints",  # the shipped models are rated by the committed report, not here
               "--baseline", "traditional", "static"])
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    names = [s["name"] for s in report["systems"]]
    assert names == ["truth", "traditional", "static", "base", "online"]
    for s in report["systems"]:
        if s["name"] in ("base", "online"):
            assert not s["available"] and "checkpoint" in s["reason"]
            continue
        assert s["available"], s
        for cat in ("speaking", "listening", "conversation", "text_control", "zeroshot", "long"):
            assert set(METRIC_KEYS) <= set(s["metrics"][cat]), cat
        assert s["metrics"]["seen"]["clips"] == 2 and s["metrics"]["zeroshot"]["clips"] == 1
        assert s["long"]["identity_sim_per_min"]
    truth = report["systems"][0]["metrics"]["seen"]
    assert truth["world_fid"] == pytest.approx(0.0, abs=1e-3) and truth["fps"] is None  # a recording
    # Two seen clips are too few for an interval (scoring.MIN_DEFINING_CLIPS): none rather than a false point.
    assert isinstance(truth["ci95"], dict) and "identity_sim" not in truth["ci95"]
    assert set(report["instruments"]["identity_checks"]) <= {"val", "zeroshot"}
    assert set(report["instruments"]["face"]) == {"val", "zeroshot"}  # the face reader's own figures are reported
    assert any("identity on the val truth render" in n for n in report["validation"])
    static = report["systems"][2]["metrics"]["seen"]
    assert static["fps"] > 0 and static["identity_sim"] == pytest.approx(1.0, abs=1e-4)
    md = (out / "report.md").read_text()
    assert "| traditional |" in md and "not available" in md
    # Every other available system against the baseline, clip for clip (the truth is not compared).
    paired = report["paired"]
    assert paired["baseline"] == "traditional" and set(paired["systems"]) == {"static"}
    assert paired["systems"]["static"]["seen"]["clips"] == 2
    value = paired["systems"]["static"]["seen"]["identity_sim"][0]
    assert value == pytest.approx(static["identity_sim"] - report["systems"][1]["metrics"]["seen"]["identity_sim"])
    assert "## Paired differences against `traditional`" in md
    also = report["paired_also"]  # a second baseline: its own table
    assert [t["baseline"] for t in also] == ["static"] and set(also[0]["systems"]) == {"traditional"}
    assert also[0]["systems"]["traditional"]["seen"]["identity_sim"][0] == pytest.approx(-value)
    assert "## Paired differences against `static`" in md
    assert (out / "lipsync.png").is_file() and (out / "identity_long.png").is_file() and (out / "strip.png").is_file()


def test_spread_subset_is_fixed_and_keeps_the_zero_shot_share():
    from lpm.eval.suites import spread_subset

    rows = [{"split": "val"}] * 29 + [{"split": "zeroshot"}] * 12
    six = spread_subset(rows, 6)
    assert six == spread_subset(rows, 6) and len(six) == 6
    assert [rows[i]["split"] for i in six].count("zeroshot") == 2
    assert six[0] == 0 and six[3] == 28  # spread from the first val clip to the last
    assert spread_subset(rows, 3) == [0, 28, 29] and spread_subset(rows, 100) == list(range(41))


def test_bench_refuses_a_missing_data_set_other_than_its_own(tmp_path, tiny_world):
    import lpm.eval.bench as bench
    from lpm.errors import LpmError

    inst = tiny_world / "inst"
    with pytest.raises(LpmError, match="not a clip data set"):
        bench.run_bench("quick", tmp_path / "out", data=tmp_path / "missing",
                        probe=inst / "probe" / "model.safetensors", identity=inst / "identity" / "model.safetensors",
                        states=inst / "states.safetensors")
    with pytest.raises(LpmError, match="--baseline 'rig' is not a system of this run"):
        bench.run_bench("quick", tmp_path / "out", data=tiny_world / "data", baseline="rig",
                        probe=inst / "probe" / "model.safetensors", identity=inst / "identity" / "model.safetensors",
                        states=inst / "states.safetensors", checkpoints={})
    with pytest.raises(LpmError, match="train-states"):
        bench.run_bench("quick", tmp_path / "out", data=tiny_world / "data",
                        probe=inst / "probe" / "model.safetensors", identity=inst / "identity" / "model.safetensors",
                        states=tmp_path / "none.safetensors")


def test_bench_threads_follow_the_cores_busy_now(monkeypatch):
    """The bench takes the idle cores, measured now (not the lagging load average), at least one."""
    from lpm.eval import bench

    monkeypatch.setattr(bench.os, "cpu_count", lambda: 2)
    assert [bench._threads(b) for b in (0.0, 0.4, 0.6, 1.4, 2.0, 5.0)] == [2, 2, 1, 1, 1, 1]
    busy = bench.busy_cores(0.05)
    assert 0.0 <= busy <= 2.0 + 1e-6
