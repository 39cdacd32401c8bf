"""Fuzz: byte corruptions of small media files through the readers. Each either reads (with sane output and
damage) or is refused with a MediaError naming the file; none crashes, raises anything else, or runs long."""

from __future__ import annotations

import time

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis", reason="the dev extra (pip install -e '.[dev]') is not installed")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from lpm.errors import MediaError  # noqa: E402
from lpm.media.corpus import mux, ramp_content  # noqa: E402
from lpm.media.decode_audio import audio_for_video, decode_audio  # noqa: E402
from lpm.media.decode_video import FrameReader, probe  # noqa: E402

EXAMPLE_BOUND_S = 5.0  # one corrupted file through every reader (clean ones take ~0.05 s)
SETTINGS = settings(max_examples=25, deadline=None, database=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def originals(tmp_path_factory) -> dict[str, bytes]:
    """One second of small video with audio in three containers / codec pairs, and an audio-only file."""
    root = tmp_path_factory.mktemp("fuzz")
    frames, times, audio = ramp_content(1.0, 12, size=(32, 48), rate=16000)
    files = {
        "a.mkv": dict(fmt="matroska", acodec="aac"),
        "a.mp4": dict(fmt="mp4", acodec="aac", options={"movflags": "faststart"}),
        "a.avi": dict(fmt="avi", acodec="ac3", rate=48000),
    }
    out = {}
    for name, kw in files.items():
        rate = kw.pop("rate", 16000)
        pcm = audio if rate == 16000 else np.repeat(audio, 3, axis=1)
        out[name] = mux(root / name, frames, times, pcm, rate, gop=4, **kw).read_bytes()
    out["a.flac"] = mux(root / "a.flac", None, None, audio, 16000, acodec="flac", fmt="flac").read_bytes()
    return out


def _read_everything(path) -> None:
    """Every reader on one file; checks what comes out when it is not refused."""
    try:
        decoded = decode_audio(path)
        assert decoded.pcm.ndim == 2 and decoded.pcm.shape[1] > 0 and np.isfinite(decoded.pcm).all()
        assert decoded.damage.damaged_s >= 0 and decoded.seconds < 600
    except MediaError as e:
        assert path.name in str(e)
    if path.suffix == ".flac":
        return
    try:
        reader = FrameReader(probe(path), 24)
        n = 0
        for frame in reader:
            assert frame.dtype == np.uint8 and frame.shape[2] == 3
            n += 1
            assert n < 24 * 600, "runaway output"
        audio, damage = audio_for_video(path, n, 24)
        assert audio.shape[1] == round(n * 16000 / 24) and np.isfinite(audio).all()
        assert reader.damage.damaged_s >= 0 and damage.damaged_s >= 0 and reader.damage.timestamp_jumps >= 0
    except MediaError as e:
        assert path.name in str(e)


@SETTINGS
@given(name=st.sampled_from(["a.mkv", "a.mp4", "a.avi", "a.flac"]),
       edits=st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(0, 255)), min_size=1, max_size=40),
       cut=st.one_of(st.none(), st.floats(0.05, 1.0)))
def test_corrupted_bytes_never_crash_or_hang(originals, tmp_path, name, edits, cut):
    data = bytearray(originals[name])
    for where, value in edits:
        data[min(len(data) - 1, int(where * len(data)))] = value
    if cut is not None:
        data = data[: max(1, int(cut * len(data)))]
    path = tmp_path / f"fuzz_{name}"
    path.write_bytes(bytes(data))
    t0 = time.perf_counter()
    _read_everything(path)
    assert time.perf_counter() - t0 < EXAMPLE_BOUND_S


@SETTINGS
@given(name=st.sampled_from(["a.mkv", "a.mp4", "a.avi"]), start=st.floats(0.0, 1.0),
       length=st.integers(1, 400), seed=st.integers(0, 2**16))
def test_random_runs_of_bytes_never_crash_or_hang(originals, tmp_path, name, start, length, seed):
    """A run of random bytes (a damaged sector, a bad network packet) anywhere in the file."""
    data = bytearray(originals[name])
    i = int(start * (len(data) - 1))
    run = np.random.default_rng(seed).integers(0, 256, length, dtype=np.uint8).tobytes()
    data[i:i + length] = run[: len(data) - i]
    path = tmp_path / f"run_{name}"
    path.write_bytes(bytes(data))
    t0 = time.perf_counter()
    _read_everything(path)
    assert time.perf_counter() - t0 < EXAMPLE_BOUND_S


@pytest.fixture(scope="module")
def pictures() -> dict[str, bytes]:
    """A small photo-like picture as JPEG (with EXIF orientation), PNG and a two-frame GIF."""
    import io

    from PIL import Image

    rng = np.random.default_rng(0)
    im = Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8))
    out = {}
    exif = Image.Exif()
    exif[0x0112] = 6
    for fmt, kw in (("JPEG", {"exif": exif.tobytes()}), ("PNG", {}),
                    ("GIF", {"save_all": True, "append_images": [im.rotate(90)]})):
        buf = io.BytesIO()
        im.save(buf, format=fmt, **kw)
        out[fmt] = buf.getvalue()
    return out


@SETTINGS
@given(fmt=st.sampled_from(["JPEG", "PNG", "GIF"]),
       edits=st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(0, 255)), min_size=1, max_size=20),
       cut=st.one_of(st.none(), st.floats(0.05, 1.0)))
def test_corrupted_pictures_are_read_or_refused(pictures, fmt, edits, cut):
    from lpm.media.image import read_picture

    data = bytearray(pictures[fmt])
    for where, value in edits:
        data[min(len(data) - 1, int(where * len(data)))] = value
    if cut is not None:
        data = data[: max(1, int(cut * len(data)))]
    try:
        picture = read_picture(bytes(data), "fuzzed", max_pixels=4096 * 4096)
    except MediaError as e:
        assert str(e).startswith("fuzzed: ")
        return
    assert picture.image.dtype == np.uint8 and picture.image.ndim == 3 and picture.image.shape[2] == 3
