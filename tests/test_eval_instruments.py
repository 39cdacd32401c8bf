"""Bench instruments: probe targets, networks, contrastive loss, verification, a tiny training run."""

import numpy as np
import pytest
import torch

from lpm.eval.identity import IdentityNet, supcon_loss, verification
from lpm.eval.probe import NUM_TARGETS, MotionProbe, decode_targets, encode_targets, read_frames
from lpm.eval.renders import render_set
from lpm.eval.train import IDENTITY_KIND, PROBE_KIND, InstrumentTrainConfig, load_identity, load_probe, train_instrument
from lpm.world.frames import random_poses
from lpm.world.motion import EMOTIONS, MOTION_INDEX


def test_targets_round_trip():
    poses = random_poses(np.random.default_rng(0), 64)
    targets, emotion = encode_targets(poses)
    assert targets.shape == (64, NUM_TARGETS) and np.abs(targets).max() <= 1.0 + 1e-6
    back = decode_targets(targets)
    yaw = MOTION_INDEX["body_yaw"]
    diff = back - poses
    diff[:, yaw] = (diff[:, yaw] + 180) % 360 - 180  # +-180 are the same turn
    assert np.abs(diff).max() < 1e-3
    emo = poses[:, MOTION_INDEX["emo_happy"]: MOTION_INDEX["emo_angry"] + 1]
    assert ((emotion == 0) == (emo.max(1) == 0)).all() and emotion.max() < len(EMOTIONS)


def test_probe_reads_any_resolution():
    probe = MotionProbe()
    for res in (64, 128):
        track = read_frames(probe, np.zeros((3, res, res, 3), np.uint8))
        assert track.motion.shape == (3, 18) and track.emotion_probs.shape == (3, 5)
        assert np.allclose(track.emotion_probs.sum(1), 1.0, atol=1e-5)
    assert read_frames(probe, np.zeros((0, 64, 64, 3), np.uint8)).motion.shape == (0, 18)


def test_supcon_prefers_clustered_embeddings():
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    centres = torch.nn.functional.normalize(torch.eye(3), dim=1)
    good = centres[labels]
    bad = torch.nn.functional.normalize(torch.randn(6, 3, generator=torch.Generator().manual_seed(0)), dim=1)
    assert supcon_loss(good, labels, 0.1) < supcon_loss(bad, labels, 0.1)
    assert IdentityNet()(torch.zeros(2, 3, 128, 128)).norm(dim=1).allclose(torch.ones(2))


def test_verification_separable_and_random():
    ids = np.repeat(np.arange(4), 5)
    emb = np.eye(4)[ids]
    v = verification(emb, ids, "val")
    assert v.eer == 0.0 and v.accuracy == 1.0 and v.same_mean == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    noise = rng.normal(size=(200, 8))
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    assert 0.35 < verification(noise, np.repeat(np.arange(40), 5), "val").eer < 0.65


def test_render_set_is_deterministic_and_labelled():
    a = render_set("val", 2, 3, res=64, workers=1)
    b = render_set("val", 2, 3, res=64, workers=1)
    assert a.frames.shape == (6, 64, 64, 3) and a.identity.tolist() == [0, 0, 0, 1, 1, 1]
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.poses, b.poses)
    assert render_set("zeroshot", 1, 1, res=64, workers=1).styles == ["sketch"]


def test_tiny_training_run_saves_loadable_instruments(tmp_path):
    cfg = InstrumentTrainConfig(train_identities=4, val_identities=2, zeroshot_identities=2, per_identity=2, res=64,
                                steps=2, batch=4, identities_per_batch=2, threads=1)
    acc = train_instrument(PROBE_KIND, tmp_path / "probe", cfg, log=lambda *_: None)
    assert set(acc) == {"val", "zeroshot"} and "jaw_open" in acc["val"]["channels"]
    probe, meta = load_probe(tmp_path / "probe" / "model.safetensors")
    assert meta["extra"]["accuracy"]["val"]["frames"] == 4
    acc = train_instrument(IDENTITY_KIND, tmp_path / "identity", cfg, log=lambda *_: None)
    assert 0.0 <= acc["val"]["eer"] <= 1.0
    load_identity(tmp_path / "identity" / "model.safetensors")
    # Rerunning the same command resumes from the train state (here: already done, so no more steps).
    logs = []
    train_instrument(PROBE_KIND, tmp_path / "probe", cfg, log=logs.append)
    assert logs[0] == "resumed motion_probe at step 2"


def test_channel_weights_lift_rarely_moving_channels():
    from lpm.eval.probe import channel_weights

    rng = np.random.default_rng(0)
    targets = np.stack([rng.uniform(-1, 1, 500), rng.normal(0, 0.1, 500), np.zeros(500)], 1)
    w = channel_weights(targets)
    assert w.mean() == pytest.approx(1.0) and w[1] > 5 * w[0]
    assert w[2] == pytest.approx(w.max())  # a constant channel is capped by the floor, not infinite


def test_probe_stem_is_saved_and_loaded(tmp_path):
    cfg = InstrumentTrainConfig(train_identities=2, val_identities=1, zeroshot_identities=1, per_identity=2, res=64,
                                steps=1, batch=2, threads=1, probe_stem=4)
    train_instrument(PROBE_KIND, tmp_path / "probe", cfg, log=lambda *_: None)
    probe, meta = load_probe(tmp_path / "probe" / "model.safetensors")
    assert probe.cfg.stem == 4 and meta["config"]["net"]["stem"] == 4
    # A probe saved before the stem existed has no "stem" in its metadata: it loads without one.
    from lpm.training.checkpoint import save_checkpoint

    first = MotionProbe()
    net = {"res": 96, "widths": [16, 32, 64, 96], "feature_dim": 128}
    save_checkpoint(tmp_path / "old.safetensors", first.state_dict(), {"net": net}, PROBE_KIND)
    old, _ = load_probe(tmp_path / "old.safetensors")
    assert old.cfg.stem == 0
