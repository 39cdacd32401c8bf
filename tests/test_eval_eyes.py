"""The eye reader: patch geometry, targets, reading and merging, training and loading."""

import numpy as np
import pytest
import torch

from lpm.errors import LpmError
from lpm.eval.eyes import (
    EYE_CHANNELS,
    EYE_OUTPUTS,
    NUM_EYE_OUTPUTS,
    EyeReader,
    EyeReaderConfig,
    EyeTrack,
    box_centres,
    eye_patches,
    eye_targets,
    merge_eyes,
    read_eyes,
)
from lpm.eval.probe import MotionProbe, ProbeTrack, read_frames
from lpm.eval.renders import render_set
from lpm.eval.suites import eyes_path_or_none, read_tracks
from lpm.eval.train import EYES_KIND, InstrumentTrainConfig, load_eyes, train_instrument
from lpm.world.motion import MOTION_INDEX, NUM_MOTION


def test_box_centres_and_visibility():
    boxes = np.array([[[60, 40, 70, 50], [30, 40, 30, 50]]], np.int16)  # the second eye faces away (x0 == x1)
    centres, visible = box_centres(boxes, (128, 128))
    assert centres[0, 0] == pytest.approx([65 / 64 - 1, 45 / 64 - 1])
    assert visible.tolist() == [[True, False]]


def test_patches_are_centred_and_the_second_eye_mirrored():
    cfg = EyeReaderConfig(patch_up=0.0)
    x = -torch.ones(1, 3, 128, 128)
    # A bright 4x4 square with a bright pixel to its right, centred at pixel (64, 64) (edges 62..66).
    x[0, :, 62:66, 62:66] = 1.0
    x[0, :, 63:65, 66:70] = 1.0
    centre = torch.tensor([[[0.0, 0.0], [0.0, 0.0]]])  # the frame's centre for both eyes
    p = eye_patches(x, centre, cfg)  # (2, 3, 40, 30)
    assert p.shape == (2, 3, *cfg.patch_res)
    h, w = cfg.patch_res
    a, b = p[0, 0], p[1, 0]
    assert a[h // 2 - 1: h // 2 + 1, w // 2 - 1: w // 2 + 1].min() > 0.9  # the square sits at the patch centre
    assert torch.allclose(b, a.flip(-1), atol=1e-5)  # the second eye is the mirror image
    assert a[h // 2, w // 2 + 4] > 0.5 and a[h // 2, w // 2 - 5] < -0.9  # the tail is to the right in eye 0 only
    # patch_up moves the patch up the frame: the square then sits below the patch centre.
    up = eye_patches(x, centre, EyeReaderConfig(patch_up=0.047))[0, 0]
    rows = torch.nonzero(up[:, w // 2] > 0.9).flatten().float()
    assert rows.mean() > h // 2 + 4


def test_eye_targets_scale_and_mirror():
    poses = np.zeros((1, NUM_MOTION), np.float32)
    poses[0, MOTION_INDEX["blink_l"]] = 1.0
    poses[0, MOTION_INDEX["gaze_x"]] = 0.5
    poses[0, MOTION_INDEX["brow_raise"]] = -1.0
    t = eye_targets(poses)
    assert t.shape == (1, 2, NUM_EYE_OUTPUTS)
    assert t[0, 0, 0] == pytest.approx(1.0) and t[0, 1, 0] == pytest.approx(-1.0)  # blink_l shut, blink_r open
    assert t[0, 0, 1] == pytest.approx(0.5) and t[0, 1, 1] == pytest.approx(-0.5)  # gaze_x flips for eye 1
    assert t[0, :, EYE_OUTPUTS.index("brow_raise")].tolist() == [-1.0, -1.0]


class _FixedReader(EyeReader):
    """Answers fixed per-eye outputs: eye 0 reads gaze_x +0.5, eye 1 (mirrored) -0.5; eye 1 hidden in frame 1."""

    def forward(self, x):
        b = x.shape[0]
        out = torch.zeros(b, 2, NUM_EYE_OUTPUTS)
        out[:, 0, 0], out[:, 1, 0] = 1.0, -1.0  # eye 0 shut, eye 1 open
        out[:, 0, 1], out[:, 1, 1] = 0.5, -0.5
        out[:, :, 3] = torch.tensor([0.2, 0.4])
        vis = torch.full((b, 2), 5.0)
        vis[1::2, 1] = -5.0
        return out, torch.zeros(b, 2, 2), vis


def test_read_eyes_averages_visible_eyes_and_unmirrors_gaze():
    track = read_eyes(_FixedReader(), np.zeros((2, 64, 64, 3), np.uint8))
    ch = {name: track.motion[:, k] for k, name in enumerate(EYE_CHANNELS)}
    assert ch["gaze_x"].tolist() == pytest.approx([0.5, 0.5])  # the mirrored eye agrees once flipped back
    assert ch["blink_l"].tolist() == pytest.approx([1.0, 1.0])
    assert ch["blink_r"][0] == pytest.approx(0.0) and np.isnan(ch["blink_r"][1])  # hidden in frame 1
    assert ch["brow_raise"].tolist() == pytest.approx([0.3, 0.2])  # both eyes, then eye 0 alone


def test_merge_eyes_overrides_only_what_was_read():
    f = 3
    probe = ProbeTrack(np.full((f, NUM_MOTION), 0.7, np.float32), np.zeros((f, 5), np.float32),
                       np.zeros((f, 4), np.float32))
    read = np.full((f, len(EYE_CHANNELS)), np.nan, np.float32)
    read[0] = [0.1, 0.2, 0.3, 0.4, 0.5]
    read[1, EYE_CHANNELS.index("blink_l")] = 0.9  # the right eye hidden: its blink takes the left eye's
    merged = merge_eyes(probe, EyeTrack(read, np.ones((f, 2)), np.zeros((f, 2, 2))))
    for k, name in enumerate(EYE_CHANNELS):
        assert merged.channel(name)[0] == pytest.approx(read[0, k])
        assert merged.channel(name)[2] == pytest.approx(0.7)  # nothing read: the probe's value
    assert merged.channel("blink_r")[1] == pytest.approx(0.9) and merged.channel("gaze_x")[1] == pytest.approx(0.7)
    assert merged.channel("jaw_open").tolist() == pytest.approx([0.7] * f)  # other channels untouched
    with pytest.raises(ValueError, match="frames"):
        merge_eyes(probe, EyeTrack(read[:2], np.ones((2, 2)), np.zeros((2, 2, 2))))


def test_render_sets_carry_eye_boxes():
    rs = render_set("val", 1, 3, res=64, workers=1)
    assert rs.eyes is not None and rs.eyes.shape == (3, 2, 4)
    centres, visible = box_centres(rs.eyes, (64, 64))
    assert np.all(np.abs(centres) < 1)
    # Eye 0 is the character's left eye: on the viewer's right when the face is seen from the front.
    front = visible.all(1)
    assert np.all(centres[front, 0, 0] > centres[front, 1, 0])


def test_tiny_eye_reader_trains_saves_and_reads_like_the_instruments(tmp_path):
    cfg = InstrumentTrainConfig(train_identities=2, val_identities=1, zeroshot_identities=1, per_identity=4, res=64,
                                steps=2, batch=4, threads=1)
    acc = train_instrument(EYES_KIND, tmp_path / "eyes", cfg, log=lambda *_: None)
    assert set(acc) == {"val", "zeroshot"} and set(acc["val"]["channels"]) == set(EYE_CHANNELS)
    assert acc["val"]["locator_px_p50"] >= 0 and 0 <= acc["val"]["visibility_acc"] <= 1
    path = tmp_path / "eyes" / "model.safetensors"
    reader, meta = load_eyes(path)
    assert reader.cfg == EyeReaderConfig() and meta["extra"]["accuracy"]["val"]["frames"] == 4
    frames = render_set("val", 1, 2, res=64, workers=1).frames
    probe = MotionProbe().eval()
    # The instruments' reading is the probe's track with the reader's channels merged in.
    want = merge_eyes(read_frames(probe, frames), read_eyes(reader, frames))
    assert np.array_equal(read_tracks(probe, reader, frames).motion, want.motion)
    assert np.array_equal(read_tracks(probe, None, frames).motion, read_frames(probe, frames).motion)
    assert eyes_path_or_none(path) == path and eyes_path_or_none("none") is None
    with pytest.raises(LpmError, match="train-eyes"):
        eyes_path_or_none(tmp_path / "missing.safetensors")
