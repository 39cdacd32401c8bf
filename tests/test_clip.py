"""The clip format: round trip, and validation errors that name the clip and the field."""

import json
import shutil
import wave

import numpy as np
import pytest

from lpm.data.clip import ClipError, read_clip, read_manifest, write_clip
from lpm.data.video import write_wav

F, RES = 12, 64


def _make(tmp_path, name="c0"):
    rng = np.random.default_rng(0)
    frames = (rng.random((F, RES, RES, 3)) * 255).astype(np.uint8)
    frames[:, :32] = 40  # some flat area so H.264 keeps it exactly-ish
    audio = (rng.standard_normal((2, round(F * 16000 / 24))) * 0.1).astype(np.float32)
    refs = {"global": frames[0], "body_front": frames[1], "expr_happy": frames[2]}
    meta = {"id": name, "split": "train", "style": "anime", "caption": "a test clip",
            "states": ["speak"] * 6 + ["listen"] * 6, "events": [{"type": "nod", "frame": 3}]}
    motion = rng.random((F, 3)).astype(np.float32)
    row = write_clip(tmp_path / name, frames, audio, refs, meta, motion, ("a", "b", "c"))
    (tmp_path / "manifest.jsonl").write_text(json.dumps(row) + "\n")
    return tmp_path / name, frames, audio, motion


def test_round_trip(tmp_path):
    d, frames, audio, motion = _make(tmp_path)
    clip = read_clip(d)
    assert clip.video.shape == (F, 3, RES, RES)
    assert clip.video.min() >= -1 and clip.video.max() <= 1
    assert clip.audio.shape == (2, audio.shape[1])
    assert np.abs(clip.audio.numpy() - audio).max() < 1e-4
    assert np.allclose(clip.motion.numpy(), motion)
    assert set(clip.refs) == {"global", "body_front", "expr_happy"}
    assert clip.states.tolist() == [0] * 6 + [1] * 6
    assert read_manifest(tmp_path)[0]["id"] == "c0"
    part = read_clip(d, start=4, count=4)
    assert part.video.shape[0] == 4 and part.motion.shape[0] == 4
    assert np.allclose(part.motion.numpy(), motion[4:8])


def _expect(d, field):
    with pytest.raises(ClipError) as e:
        read_clip(d)
    assert field in str(e.value) and str(d) in str(e.value)


def test_missing_audio(tmp_path):
    d, *_ = _make(tmp_path)
    (d / "audio.wav").unlink()
    _expect(d, "audio.wav")


def test_wrong_sample_rate(tmp_path):
    d, _, audio, _ = _make(tmp_path)
    write_wav(d / "audio.wav", audio, 22050)
    _expect(d, "sample rate 22050")


def test_mono_audio(tmp_path):
    d, _, audio, _ = _make(tmp_path)
    write_wav(d / "audio.wav", audio[:1], 16000)
    _expect(d, "expected 2")


def test_frames_disagree_with_audio(tmp_path):
    d, _, audio, _ = _make(tmp_path)
    write_wav(d / "audio.wav", audio[:, : audio.shape[1] // 2], 16000)
    _expect(d, "frames")


def test_meta_errors(tmp_path):
    d, *_ = _make(tmp_path)
    meta = json.loads((d / "meta.json").read_text())
    bad = dict(meta, states=meta["states"][:-1])
    (d / "meta.json").write_text(json.dumps(bad))
    _expect(d, "meta.json:states")
    bad = {k: v for k, v in meta.items() if k != "caption"}
    (d / "meta.json").write_text(json.dumps(bad))
    _expect(d, "meta.json:caption")
    (d / "meta.json").write_text("{not json")
    _expect(d, "meta.json")


def test_missing_video_and_refs(tmp_path):
    d, *_ = _make(tmp_path)
    shutil.copy(d / "video.mp4", tmp_path / "v.mp4")
    (d / "video.mp4").write_bytes(b"garbage")
    _expect(d, "video.mp4")
    shutil.copy(tmp_path / "v.mp4", d / "video.mp4")
    (d / "refs" / "global.png").unlink()
    _expect(d, "refs/global.png")


def test_wav_is_16bit_stereo(tmp_path):
    d, *_ = _make(tmp_path)
    with wave.open(str(d / "audio.wav")) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (2, 2, 16000)
