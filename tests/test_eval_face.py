"""The face reader: patch geometry, targets, reading and merging, training and loading."""

import numpy as np
import pytest
import torch

from lpm.errors import LpmError
from lpm.eval.face import (
    EYE_OUTPUTS,
    FACE_CHANNELS,
    MOUTH_OUTPUTS,
    NUM_PATCH_OUTPUTS,
    READ_SHIFTS,
    REGIONS,
    FaceOutputs,
    FaceReader,
    FaceReaderConfig,
    FaceTrack,
    crop_patches,
    face_targets,
    merge_face,
    read_face,
    region_anchors,
)
from lpm.eval.probe import MotionProbe, ProbeTrack, read_frames
from lpm.eval.renders import render_set
from lpm.eval.suites import face_path_or_none, read_tracks
from lpm.eval.train import FACE_KIND, InstrumentTrainConfig, load_face, train_instrument
from lpm.world.motion import EMOTIONS, MOTION_INDEX, NUM_MOTION


def test_region_anchors_and_visibility():
    # eye_l, eye_r (facing away: x0 == x1), mouth.
    boxes = np.array([[[60, 40, 70, 50], [30, 40, 30, 50], [50, 60, 80, 84]]], np.int16)
    anchors, visible = region_anchors(boxes, (128, 128))
    assert anchors[0, 0] == pytest.approx([65 / 64 - 1, 45 / 64 - 1])  # an eye: its box centre
    assert anchors[0, 2] == pytest.approx([65 / 64 - 1, 60 / 64 - 1])  # the mouth: the middle of its upper edge
    assert visible.tolist() == [[True, False, True]]


def test_patches_are_centred_offset_and_mirrored():
    x = -torch.ones(1, 3, 128, 128)
    # A bright 4x4 square with a tail to its right, centred at pixel (64, 64) (edges 62..66).
    x[0, :, 62:66, 62:66] = 1.0
    x[0, :, 63:65, 66:70] = 1.0
    centre = torch.zeros(1, 2, 2)  # the frame's centre, twice
    res = (40, 30)
    p = crop_patches(x, centre, 0.1875, 0.25, 0.0, res, (False, True))  # (2, 3, 40, 30)
    assert p.shape == (2, 3, *res)
    h, w = res
    a, b = p[0, 0], p[1, 0]
    assert a[h // 2 - 1: h // 2 + 1, w // 2 - 1: w // 2 + 1].min() > 0.9  # the square sits at the patch centre
    assert torch.allclose(b, a.flip(-1), atol=1e-5)  # the second patch is the mirror image
    assert a[h // 2, w // 2 + 4] > 0.5 and a[h // 2, w // 2 - 5] < -0.9  # the tail is to the right, unmirrored
    # A negative dy moves the patch up the frame: the square then sits below the patch centre.
    up = crop_patches(x, centre[:, :1], 0.1875, 0.25, -0.047, res, (False,))[0, 0]
    rows = torch.nonzero(up[:, w // 2] > 0.9).flatten().float()
    assert rows.mean() > h // 2 + 4


def test_face_targets_scale_and_mirror():
    poses = np.zeros((1, NUM_MOTION), np.float32)
    poses[0, MOTION_INDEX["blink_l"]] = 1.0
    poses[0, MOTION_INDEX["gaze_x"]] = 0.5
    poses[0, MOTION_INDEX["brow_raise"]] = -1.0
    poses[0, MOTION_INDEX["jaw_open"]] = 1.0
    poses[0, MOTION_INDEX["emo_sad"]] = 0.8
    t, emotion = face_targets(poses)
    assert t.shape == (1, len(REGIONS), NUM_PATCH_OUTPUTS)
    assert t[0, 0, 0] == pytest.approx(1.0) and t[0, 1, 0] == pytest.approx(-1.0)  # blink_l shut, blink_r open
    g = EYE_OUTPUTS.index("gaze_x")
    assert t[0, 0, g] == pytest.approx(0.5) and t[0, 1, g] == pytest.approx(-0.5)  # gaze_x flips for eye_r
    assert t[0, :2, EYE_OUTPUTS.index("brow_raise")].tolist() == [-1.0, -1.0]
    assert t[0, 2, MOUTH_OUTPUTS.index("jaw_open")] == pytest.approx(1.0)
    assert t[0, 2, MOUTH_OUTPUTS.index("emo_sad")] == pytest.approx(0.6)  # 0.8 of 0..1 scaled to [-1, 1]
    assert EMOTIONS[emotion[0]] == "sad"


class _FixedReader(FaceReader):
    """Fixed outputs: eye_l reads gaze_x +0.5, eye_r (mirrored) -0.5; eye_r hidden in odd frames, the mouth in
    frame 1."""

    def forward(self, x, shifts=((0.0, 0.0),)):
        b = x.shape[0]
        out = torch.zeros(b, len(REGIONS), NUM_PATCH_OUTPUTS)
        out[:, 0, 0], out[:, 1, 0] = 1.0, -1.0  # eye_l shut, eye_r open
        out[:, 0, 1], out[:, 1, 1] = 0.5, -0.5
        out[:, :2, 3] = torch.tensor([0.2, 0.4])
        out[:, 2, MOUTH_OUTPUTS.index("jaw_open")] = 1.0
        vis = torch.full((b, len(REGIONS)), 5.0)
        vis[1::2, 1] = -5.0
        vis[1, 2] = -5.0
        emotion = torch.zeros(b, len(EMOTIONS))
        emotion[:, EMOTIONS.index("happy")] = 9.0
        return FaceOutputs(out, emotion, torch.zeros(b, len(REGIONS), 2), vis)


def test_read_face_averages_visible_eyes_unmirrors_gaze_and_skips_hidden_regions():
    track = read_face(_FixedReader(), np.zeros((2, 64, 64, 3), np.uint8))
    ch = {name: track.motion[:, k] for k, name in enumerate(FACE_CHANNELS)}
    assert ch["gaze_x"].tolist() == pytest.approx([0.5, 0.5])  # the mirrored eye agrees once flipped back
    assert ch["blink_l"].tolist() == pytest.approx([1.0, 1.0])
    assert ch["blink_r"][0] == pytest.approx(0.0) and np.isnan(ch["blink_r"][1])  # hidden in frame 1
    assert ch["brow_raise"].tolist() == pytest.approx([0.3, 0.2])  # both eyes, then eye_l alone
    assert ch["jaw_open"][0] == pytest.approx(1.0) and np.isnan(ch["jaw_open"][1])
    assert np.all(track.emotion_probs.argmax(1) == EMOTIONS.index("happy"))


def test_shifted_reading_averages_the_reads_around_the_anchor():
    torch.manual_seed(0)
    reader = FaceReader(FaceReaderConfig()).eval()
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        one = reader(x)
        anchors = reader.locator(x)[0]
        reads = [reader.read_at(x, anchors + torch.tensor(s) / 64.0) for s in READ_SHIFTS]
        many = reader(x, READ_SHIFTS)
    assert torch.equal(one.regions, reader.read_at(x, anchors)[0])  # no shift: the plain reading
    assert torch.allclose(many.regions, torch.stack([r for r, _ in reads]).mean(0), atol=1e-6)
    probs = torch.stack([e.softmax(-1) for _, e in reads]).mean(0)
    assert torch.allclose(many.emotion.softmax(-1), probs, atol=1e-6)
    assert torch.equal(many.anchors, one.anchors) and torch.equal(many.visible, one.visible)
    assert (0.0, 0.0) in READ_SHIFTS and len(set(READ_SHIFTS)) == len(READ_SHIFTS)
    assert np.allclose(np.mean(READ_SHIFTS, 0), 0)  # symmetric: no net offset of the anchors
    with pytest.raises(ValueError, match="shifts"):
        reader(x, ())


def test_merge_face_overrides_only_what_was_read():
    f = 3
    probe = ProbeTrack(np.full((f, NUM_MOTION), 0.7, np.float32), np.full((f, len(EMOTIONS)), 0.2, np.float32),
                       np.zeros((f, 4), np.float32))
    read = np.full((f, len(FACE_CHANNELS)), np.nan, np.float32)
    read[0] = np.linspace(0.1, 0.9, len(FACE_CHANNELS))
    read[1, FACE_CHANNELS.index("blink_l")] = 0.9  # the right eye hidden: its blink takes the left eye's
    emo = np.eye(len(EMOTIONS), dtype=np.float32)[[1, 2, 3]]
    face = FaceTrack(read, emo, np.ones((f, len(REGIONS))), np.zeros((f, len(REGIONS), 2)))
    merged = merge_face(probe, face)
    for k, name in enumerate(FACE_CHANNELS):
        assert merged.channel(name)[0] == pytest.approx(read[0, k])
        assert merged.channel(name)[2] == pytest.approx(0.7)  # nothing read: the probe's value
    assert merged.channel("blink_r")[1] == pytest.approx(0.9) and merged.channel("gaze_x")[1] == pytest.approx(0.7)
    assert merged.channel("head_pitch").tolist() == pytest.approx([0.7] * f)  # other channels untouched
    assert np.array_equal(merged.emotion_probs, emo) and merged.features is probe.features
    assert np.array_equal(merge_face(probe, face, emotion=False).emotion_probs, probe.emotion_probs)
    with pytest.raises(ValueError, match="frames"):
        merge_face(probe, FaceTrack(read[:2], emo[:2], np.ones((2, 3)), np.zeros((2, 3, 2))))


def test_render_sets_carry_region_boxes():
    rs = render_set("val", 1, 3, res=64, workers=1)
    assert rs.boxes is not None and rs.boxes.shape == (3, len(REGIONS), 4)
    anchors, visible = region_anchors(rs.boxes, (64, 64))
    assert np.all(np.abs(anchors) < 1)
    # eye_l is the character's left eye: on the viewer's right when the face is seen from the front; the mouth
    # lies below the eyes.
    front = visible.all(1)
    assert np.all(anchors[front, 0, 0] > anchors[front, 1, 0])
    assert np.all(anchors[front, 2, 1] > anchors[front, 0, 1])


def test_tiny_face_reader_trains_saves_and_reads_like_the_instruments(tmp_path):
    cfg = InstrumentTrainConfig(train_identities=2, val_identities=1, zeroshot_identities=1, per_identity=4, res=64,
                                steps=2, batch=4, threads=1)
    acc = train_instrument(FACE_KIND, tmp_path / "face", cfg, log=lambda *_: None)
    assert set(acc) == {"val", "zeroshot"} and set(acc["val"]["channels"]) == set(FACE_CHANNELS)
    assert acc["val"]["locator_px_p50"] >= 0 and 0 <= acc["val"]["visibility_acc"] <= 1
    path = tmp_path / "face" / "model.safetensors"
    reader, meta = load_face(path)
    assert reader.cfg == FaceReaderConfig() and meta["extra"]["accuracy"]["val"]["frames"] == 4
    frames = render_set("val", 1, 2, res=64, workers=1).frames
    probe = MotionProbe().eval()
    # The instruments' reading is the probe's track with the reader's channels merged in.
    want = merge_face(read_frames(probe, frames), read_face(reader, frames))
    got = read_tracks(probe, reader, frames)
    assert np.array_equal(got.motion, want.motion) and np.array_equal(got.emotion_probs, want.emotion_probs)
    assert np.array_equal(read_tracks(probe, None, frames).motion, read_frames(probe, frames).motion)
    assert face_path_or_none(path) == path and face_path_or_none("none") is None
    with pytest.raises(LpmError, match="train-face"):
        face_path_or_none(tmp_path / "missing.safetensors")


def test_all_styles_train_sets_include_the_zero_shot_style_with_train_identities():
    seen = render_set("train", 5, 1, res=64, workers=1)
    every = render_set("train", 5, 1, res=64, workers=1, all_styles=True)
    assert "sketch" not in seen.styles and every.styles[-1] == "sketch"
    assert np.array_equal(seen.frames[:4], every.frames[:4])  # the same train identities; the fifth is a sketch


def test_style_augment_restyles_the_chosen_share_only():
    from lpm.media.restyle import style_augment

    x = torch.rand(16, 3, 32, 32) * 2 - 1
    before = x.clone()
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(style_augment(x, 0.0, gen), x)
    y = style_augment(x, 1.0, gen)
    assert torch.equal(y[:, 0], y[:, 1]) and torch.equal(y[:, 1], y[:, 2])  # grey
    assert y.min() >= -1 and y.max() <= 1 and not torch.equal(y, x)
    assert torch.equal(x, before)  # the input is not modified in place
