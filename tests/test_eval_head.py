"""The head pose reader: targets, reading in degrees, merging into the track, training and loading."""

import numpy as np
import pytest
import torch

from lpm.errors import LpmError
from lpm.eval.head import (
    HEAD_CHANNELS,
    HEAD_POSE_CONFIG,
    HeadPoseReader,
    head_targets,
    merge_head,
    read_head,
)
from lpm.eval.probe import MotionProbe, ProbeConfig, ProbeTrack, from_unit, read_frames
from lpm.eval.renders import render_set
from lpm.eval.suites import head_path_or_none, read_tracks
from lpm.eval.train import HEAD_KIND, InstrumentTrainConfig, load_head, train_instrument
from lpm.world.motion import MOTION_INDEX, MOTION_RANGE, NUM_MOTION

HEAD = [MOTION_INDEX[c] for c in HEAD_CHANNELS]


class FixedReader(HeadPoseReader):
    """Reads every frame as the same scaled angles."""

    def __init__(self, unit: list[float]):
        super().__init__(ProbeConfig(widths=(4,), stem=4, res=16, feature_dim=4))
        self.unit = torch.tensor(unit)

    def forward(self, x):
        return self.unit.expand(len(x), -1)


def test_targets_scale_each_angle_by_its_range():
    poses = np.zeros((3, NUM_MOTION), np.float32)
    for k, c in enumerate(HEAD_CHANNELS):
        lo, hi = MOTION_RANGE[c]
        poses[:, HEAD[k]] = [lo, (lo + hi) / 2, hi]
    t = head_targets(poses)
    assert t.shape == (3, 3)
    np.testing.assert_allclose(t, [[-1] * 3, [0] * 3, [1] * 3], atol=1e-6)
    np.testing.assert_allclose(from_unit(t, np.array(HEAD)), poses[:, HEAD], atol=1e-4)


def test_read_head_returns_degrees_and_merge_replaces_only_the_head():
    frames = np.zeros((5, 64, 64, 3), np.uint8)
    read = read_head(FixedReader([0.5, -0.5, 0.0]), frames)
    want = [from_unit(np.array(u), MOTION_INDEX[c]) for u, c in zip((0.5, -0.5, 0.0), HEAD_CHANNELS)]
    np.testing.assert_allclose(read, np.tile(want, (5, 1)), atol=1e-5)
    track = ProbeTrack(np.random.default_rng(0).normal(size=(5, NUM_MOTION)).astype(np.float32),
                       np.full((5, 5), 0.2, np.float32), np.ones((5, 8), np.float32))
    merged = merge_head(track, read)
    other = [i for i in range(NUM_MOTION) if i not in HEAD]
    np.testing.assert_array_equal(merged.motion[:, other], track.motion[:, other])
    np.testing.assert_array_equal(merged.motion[:, HEAD], read)
    assert merged.features is track.features and merged.emotion_probs is track.emotion_probs
    with pytest.raises(ValueError, match="4"):
        merge_head(track, read[:4])


def test_tiny_head_reader_trains_saves_and_reads_like_the_instruments(tmp_path):
    cfg = InstrumentTrainConfig(train_identities=2, val_identities=1, zeroshot_identities=1, per_identity=4, res=64,
                                steps=2, batch=4, threads=1)
    acc = train_instrument(HEAD_KIND, tmp_path / "head", cfg, log=lambda *_: None)
    assert set(acc) == {"val", "zeroshot"} and set(acc["val"]["channels"]) == set(HEAD_CHANNELS)
    assert acc["val"]["frames"] == 4 and acc["val"]["channels"]["head_roll"]["mae"] >= 0
    path = tmp_path / "head" / "model.safetensors"
    reader, meta = load_head(path)
    assert reader.cfg == HEAD_POSE_CONFIG and meta["extra"]["accuracy"]["zeroshot"]["frames"] == 4
    frames = render_set("val", 1, 2, res=64, workers=1).frames
    probe = MotionProbe().eval()
    # The instruments' reading is the probe's track with the head angles merged in.
    want = merge_head(read_frames(probe, frames), read_head(reader, frames))
    got = read_tracks(probe, None, frames, head=reader)
    np.testing.assert_array_equal(got.motion, want.motion)
    assert head_path_or_none(path) == path and head_path_or_none("none") is None
    with pytest.raises(LpmError, match="train-head"):
        head_path_or_none(tmp_path / "missing.safetensors")
