"""A longer fuzz campaign than the test suite's: random corruptions of small media files and pictures, for a time.

    python scripts/fuzz_media.py --seconds 120 [--seed 0] [--out /tmp/lpm_fuzz]

Each corrupted file goes through every reader (``decode_audio``; ``probe`` + ``FrameReader`` + ``audio_for_video``;
``read_picture``). A reader may read it or refuse it with a MediaError; anything else is a crash, and the file is
kept in ``--out`` to reproduce it (as is one that took over SLOW_S). Prints the outcome counts and the slowest file.
"""

from __future__ import annotations

import argparse
import io
import time
import traceback
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from lpm.errors import MediaError
from lpm.media.corpus import mux, ramp_content
from lpm.media.decode_audio import audio_for_video, decode_audio
from lpm.media.decode_video import FrameReader, probe
from lpm.media.image import read_picture

SLOW_S = 2.0  # a file taking longer than this is kept
MEDIA = {  # name -> mux arguments (one second, 12 fps, 48x32, a keyframe every 4 frames)
    "a.mkv": dict(fmt="matroska", acodec="aac"),
    "a.mp4": dict(fmt="mp4", acodec="aac", options={"movflags": "faststart"}),
    "a.avi": dict(fmt="avi", acodec="ac3", rate=48000),
    "a.webm": dict(fmt="webm", acodec="libopus", vcodec="libvpx-vp9", rate=48000),
    "a.mov": dict(fmt="mov", acodec="pcm_s16le", vcodec="libx264"),
}


def originals(root: Path) -> dict[str, bytes]:
    frames, times, audio = ramp_content(1.0, 12, size=(32, 48), rate=16000)
    out = {}
    for name, kw in MEDIA.items():
        kw = dict(kw)
        rate = kw.pop("rate", 16000)
        pcm = audio if rate == 16000 else np.repeat(audio, rate // 16000, axis=1)
        out[name] = mux(root / name, frames, times, pcm, rate, gop=4, **kw).read_bytes()
    rng = np.random.default_rng(0)
    im = Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6
    for fmt, kw in (("JPEG", {"exif": exif.tobytes()}), ("PNG", {}), ("WEBP", {}), ("BMP", {}), ("TIFF", {}),
                    ("GIF", {"save_all": True, "append_images": [im.rotate(90)]})):
        buf = io.BytesIO()
        im.save(buf, format=fmt, **kw)
        out[f"p.{fmt.lower()}"] = buf.getvalue()
    return out


def corrupt(data: bytes, rng: np.random.Generator) -> bytes:
    data = bytearray(data)
    mode = rng.integers(3)
    if mode == 0:  # scattered bytes
        for _ in range(rng.integers(1, 60)):
            data[rng.integers(len(data))] = rng.integers(256)
    elif mode == 1:  # a run of random bytes
        start, length = rng.integers(len(data)), rng.integers(1, 500)
        data[start:start + length] = rng.integers(0, 256, length, dtype=np.uint8).tobytes()[: len(data) - start]
    else:  # scattered bytes and a truncation
        for _ in range(rng.integers(1, 20)):
            data[rng.integers(len(data))] = rng.integers(256)
        data = data[: rng.integers(1, len(data))]
    return bytes(data)


def read_all(path: Path, picture: bool) -> str:
    if picture:
        read_picture(path)
        return "ok"
    outcome = []
    try:
        decode_audio(path)
        outcome.append("audio ok")
    except MediaError:
        outcome.append("audio refused")
    try:
        reader = FrameReader(probe(path), 24)
        n = sum(1 for _ in reader)
        audio_for_video(path, n, 24)
        outcome.append("video ok")
    except MediaError:
        outcome.append("video refused")
    return ", ".join(outcome)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="/tmp/lpm_fuzz")
    args = ap.parse_args()
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    files = originals(root)
    rng = np.random.default_rng(args.seed)
    counts: Counter = Counter()
    slowest = (0.0, "")
    end = time.monotonic() + args.seconds
    i = 0
    while time.monotonic() < end:
        i += 1
        name = list(files)[rng.integers(len(files))]
        path = root / f"x_{name}"
        path.write_bytes(corrupt(files[name], rng))
        kind = "picture" if name.startswith("p.") else "media"
        t0 = time.perf_counter()
        try:
            counts[f"{kind}: {read_all(path, kind == 'picture')}"] += 1
        except MediaError:
            counts[f"{kind}: refused"] += 1
        except Exception as e:  # noqa: BLE001 - a crash is what this script looks for
            counts[f"{kind}: CRASH {type(e).__name__}"] += 1
            path.rename(root / f"crash_{i}_{name}")
            traceback.print_exc()
        dt = time.perf_counter() - t0
        if dt > SLOW_S and path.exists():
            path.rename(root / f"slow_{i}_{name}")  # kept to look into
        if dt > slowest[0]:
            slowest = (dt, name)
    print(f"{i} corrupted files in {args.seconds:.0f} s")
    for key, n in sorted(counts.items()):
        print(f"  {key}: {n}")
    print(f"slowest: {slowest[0]:.2f} s ({slowest[1]})")


if __name__ == "__main__":
    main()
