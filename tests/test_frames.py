"""Random-pose frame sets for VAE training."""

import numpy as np

from lpm.training.vae_trainer import load_frames
from lpm.world.frames import random_poses, write_frame_sets
from lpm.world.motion import MOTION_NAMES, MOTION_RANGE


def test_random_poses_in_range():
    poses = random_poses(np.random.default_rng(0), 500)
    for i, name in enumerate(MOTION_NAMES):
        lo, hi = MOTION_RANGE[name]
        assert poses[:, i].min() >= lo - 1e-6 and poses[:, i].max() <= hi + 1e-6, name
    assert (poses[:, MOTION_NAMES.index("jaw_open")] > 0.5).mean() > 0.2  # open mouths are common


def test_frame_set_round_trip(tmp_path):
    counts = write_frame_sets(tmp_path, {"train": 2, "val": 1, "zeroshot": 1}, per_identity=3, res=64, workers=1)
    assert counts == {"train": 6, "val": 3, "zeroshot": 3}
    frames, refs = load_frames(tmp_path, "train", tmp_path / "cache", with_refs=True)
    assert frames.shape == (6, 64, 64, 3) and frames.dtype == np.uint8
    assert refs.shape == (10, 64, 64, 3)
    again = write_frame_sets(tmp_path / "b", {"train": 2}, per_identity=3, res=64, workers=1)
    assert again == {"train": 6}
    assert np.array_equal(np.load(tmp_path / "b" / "train.npz")["frames"], frames)  # deterministic
