"""Ingest decoding (any container, frame rate and audio layout), quality verdicts, audio checks, separation maths."""

from fractions import Fraction

import numpy as np
import pytest

from lpm.data.ingest_audio import is_clipped, is_silent, power_mel
from lpm.media.decode_audio import audio_for_video
from lpm.media.decode_video import FrameReader, probe

SRC_FPS = 30
SECONDS = 2
AUDIO_RATE = 48000
TONE_START_S = 1.0


def _write(path, vcodec: str, acodec: str, fmt: str) -> None:
    """Frames whose grey level is the source frame index; a 48 kHz stereo track with a tone on the right from 1 s."""
    import av

    with av.open(str(path), "w", format=fmt) as c:
        vs = c.add_stream(vcodec, rate=SRC_FPS)
        vs.width, vs.height, vs.pix_fmt = 96, 64, "yuv420p"
        ast = c.add_stream(acodec, rate=AUDIO_RATE)
        ast.layout = "stereo"
        for i in range(SRC_FPS * SECONDS):
            img = np.full((64, 96, 3), 4 * i, np.uint8)
            for p in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in vs.encode():
            c.mux(p)
        t = np.arange(AUDIO_RATE * SECONDS) / AUDIO_RATE
        pcm = np.zeros((2, len(t)), np.float32)
        pcm[1] = 0.5 * np.sin(2 * np.pi * 440 * t) * (t >= TONE_START_S)
        step = 960
        fmt_name = "fltp" if acodec != "pcm_s16le" else "s16"
        for i in range(0, len(t), step):
            block = pcm[:, i:i + step]
            if fmt_name == "s16":
                block = (block.T * 32767).astype(np.int16).reshape(1, -1)
            af = av.AudioFrame.from_ndarray(np.ascontiguousarray(block), format=fmt_name, layout="stereo")
            af.sample_rate, af.pts, af.time_base = AUDIO_RATE, i, Fraction(1, AUDIO_RATE)
            for p in ast.encode(af):
                c.mux(p)
        for p in ast.encode():
            c.mux(p)


@pytest.mark.parametrize("name,vcodec,acodec,fmt", [
    ("a.mkv", "mpeg4", "flac", "matroska"),
    ("a.webm", "libvpx-vp9", "libopus", "webm"),
    ("a.avi", "mpeg4", "pcm_s16le", "avi"),
    ("a.mov", "libx264", "aac", "mov"),
])
def test_any_container_resampled_to_24fps_and_16khz(tmp_path, name, vcodec, acodec, fmt):
    path = tmp_path / name
    _write(path, vcodec, acodec, fmt)
    info = probe(path)
    assert info.audio_channels == 2 and abs(info.source_fps - SRC_FPS) < 0.5
    reader = FrameReader(info, 24)
    frames = list(reader)
    assert reader.num_frames == len(frames) and not reader.damage.any
    assert len(frames) == 24 * SECONDS
    # Output frame k shows the source frame nearest k / 24 s.
    for k in (0, 9, 23, 47):  # instants that are not halfway between two source frames
        source_index = round(k / 24 * SRC_FPS)
        assert abs(float(frames[k].mean()) - 4 * source_index) < 4 * 0.6, k
    audio, damage = audio_for_video(path, len(frames), 24)
    assert audio.shape == (2, 16000 * SECONDS) and not damage.any, damage
    assert np.abs(audio[0]).max() < 0.02  # the left channel stays silent
    onset = np.argmax(np.abs(audio[1]) > 0.1) / 16000
    assert abs(onset - TONE_START_S) < 0.03, onset


def test_audio_checks_and_mel():
    assert is_silent(np.zeros(16000)) and not is_silent(0.1 * np.ones(16000))
    loud = np.clip(3 * np.sin(np.linspace(0, 100, 16000)), -1, 1)
    assert is_clipped(loud) and not is_clipped(0.5 * np.sin(np.linspace(0, 100, 16000)))
    mel = power_mel(np.random.default_rng(0).normal(0, 0.1, 16000).astype(np.float32))
    assert mel.shape == (101, 40) and (mel >= 0).all()


def test_frame_reasons():
    from lpm.data.ingest import FACE_BOX_FRACTION, frame_reasons
    from lpm.data.ingest_face import FaceTrack

    f = 4
    track = FaceTrack(present=np.array([False, True, True, True]),
                      box=np.array([[0, 0, 0], [50, 50, 10], [50, 50, 80], [50, 50, 80]], np.float32),
                      score=np.ones(f, np.float32), sharpness=np.array([0, 500, 5, 500], np.float32),
                      pose=np.zeros((f, 3), np.float32), mouth_open=np.zeros(f, np.float32),
                      eye_open=np.zeros((f, 2), np.float32), expression=np.zeros((f, 5), np.float32))
    assert 10 < FACE_BOX_FRACTION * 128 / 2 < 80
    assert list(frame_reasons(track, 1.0, 128)) == ["face_lost", "face_too_small", "blur", ""]


def test_expression_exemplar_prefers_closed_lips():
    """Of an expression cluster's frames, the exemplar is one with the lips shut, even where an open-mouthed frame
    sits nearer the cluster's centre (a canvas drawn on the exemplar must not hold the mouth open)."""
    from lpm.data.ingest_face import EXPRESSION_FEATURES, FaceTrack
    from lpm.data.ingest_refs import EXPRESSION_SCALES, RefPicker

    scale = np.array([EXPRESSION_SCALES[f] for f in EXPRESSION_FEATURES], np.float32)
    col = {f: i for i, f in enumerate(EXPRESSION_FEATURES)}
    z = np.zeros((36, len(EXPRESSION_FEATURES)), np.float32)
    z[12:24, col["corner_lift"]] = z[12:24, col["mouth_width"]] = 5.0  # happy
    z[24:36, col["corner_lift"]], z[24:36, col["brow_height"]] = -5.0, 2.5  # sad
    happy_open = np.arange(12, 24)[::2]
    z[happy_open, col["mouth_open"]] = 1.5  # every other happy frame talks ...
    z[np.arange(13, 24, 2), col["corner_lift"]] += 0.3  # ... and the shut ones sit a little off the centre
    f = len(z)
    track = FaceTrack(present=np.ones(f, bool), box=np.tile([[64, 64, 60]], (f, 1)).astype(np.float32),
                      score=np.ones(f, np.float32), sharpness=np.full(f, 100.0, np.float32),
                      pose=np.zeros((f, 3), np.float32), mouth_open=z[:, col["mouth_open"]] * 0.1,
                      eye_open=np.ones((f, 2), np.float32), expression=z * scale)
    picker = RefPicker(track, np.ones(f, bool))
    assert "happy" in picker.names
    happy = picker.pick(0, 0).frames["expr_happy"]
    assert 12 <= happy < 24 and happy not in happy_open
    k = picker.names.index("happy")
    nearest = int(np.argmin(np.where(picker.labels == k, picker.centroid_dist, np.inf)))
    assert nearest in happy_open  # without the mouth's cost an open-mouthed frame would have been chosen
