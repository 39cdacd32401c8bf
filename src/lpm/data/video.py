"""mp4 and wav I/O: H.264 video (optionally muxed with audio tracks) through PyAV, PCM wav through ``wave``."""

from __future__ import annotations

import wave
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path

import numpy as np

from lpm.errors import MediaError
from lpm.fsutil import atomic_path


def write_mp4(path: str | Path, frames: Iterable[np.ndarray], fps: int = 24, audio: np.ndarray | None = None,
              sample_rate: int = 16000, crf: int = 18, comment: str | None = None) -> Path:
    """Encode frames as H.264 (yuv420p), atomically; optionally mux audio as AAC.

    Args:
        frames: iterable of (H, W, 3) uint8 RGB frames (H and W even).
        audio: (C, N) float in [-1, 1] or None. C = 1 or 2 (stereo keeps self left / partner right).
        comment: the container's ``comment`` tag (e.g. how ``lpm generate`` framed its reference).
    """
    import av  # imported here: PyAV is only needed for mp4 I/O (frame caches and tests work without it)

    path = Path(path)
    with atomic_path(path, ".mp4") as tmp:
        with av.open(tmp, mode="w", format="mp4") as container:
            if comment:
                container.metadata["comment"] = comment
            vstream = container.add_stream("libx264", rate=fps)
            vstream.pix_fmt = "yuv420p"
            vstream.options = {"crf": str(crf), "preset": "veryfast"}
            astream = None
            if audio is not None:
                audio = np.asarray(audio, dtype=np.float32)
                if audio.ndim == 1:
                    audio = audio[None]
                astream = container.add_stream("aac", rate=sample_rate)
                astream.layout = "stereo" if audio.shape[0] == 2 else "mono"
            first = True
            for frame in frames:
                frame = np.ascontiguousarray(frame, dtype=np.uint8)
                if first:
                    vstream.height, vstream.width = frame.shape[:2]
                    first = False
                for packet in vstream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            if first:
                raise MediaError(f"{path}: no frames to write")
            for packet in vstream.encode():
                container.mux(packet)
            if astream is not None:
                pcm = np.clip(audio, -1, 1).astype(np.float32)
                step = 1024
                for i in range(0, pcm.shape[1], step):
                    block = np.ascontiguousarray(pcm[:, i:i + step])
                    af = av.AudioFrame.from_ndarray(block, format="fltp", layout=astream.layout.name)
                    af.sample_rate = sample_rate
                    af.pts = i
                    af.time_base = Fraction(1, sample_rate)
                    for packet in astream.encode(af):
                        container.mux(packet)
                for packet in astream.encode():
                    container.mux(packet)
    return path


def read_mp4(path: str | Path, start: int = 0, count: int | None = None) -> np.ndarray:
    """Decode frames [start, start+count) of a video as RGB.

    Returns:
        (F, H, W, 3) uint8.
    """
    import av

    path = Path(path)
    if not path.is_file():
        raise MediaError(f"{path}: video file does not exist")
    out = []
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for i, frame in enumerate(container.decode(stream)):
                if i < start:
                    continue
                if count is not None and len(out) >= count:
                    break
                out.append(frame.to_ndarray(format="rgb24"))
    except av.FFmpegError as e:
        raise MediaError(f"{path}: cannot decode video: {e}") from None
    if not out:
        raise MediaError(f"{path}: no video frames decoded (start={start})")
    return np.stack(out)


def write_wav(path: str | Path, audio: np.ndarray, sample_rate: int = 16000) -> Path:
    """Write (C, N) float audio in [-1, 1] as 16-bit PCM, atomically."""
    path = Path(path)
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 1:
        audio = audio[None]
    pcm = (np.clip(audio, -1.0, 1.0) * 32767.0).round().astype("<i2").T.copy()  # (N, C) interleaved
    with atomic_path(path, ".wav") as tmp:
        with wave.open(tmp, "wb") as w:
            w.setnchannels(audio.shape[0])
            w.setsampwidth(2)
            w.setframerate(sample_rate)
            w.writeframes(pcm.tobytes())
    return path


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Read a 16-bit PCM wav.

    Returns:
        (audio (C, N) float32 in [-1, 1], sample_rate)
    """
    path = Path(path)
    if not path.is_file():
        raise MediaError(f"{path}: audio file does not exist")
    try:
        with wave.open(str(path), "rb") as w:
            channels, width, rate, n = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
            raw = w.readframes(n)
    except (wave.Error, EOFError) as e:
        raise MediaError(f"{path}: not a readable PCM wav: {e}") from None
    if width != 2:
        raise MediaError(f"{path}: expected 16-bit PCM, got {8 * width}-bit samples")
    data = np.frombuffer(raw, dtype="<i2").reshape(-1, channels).T.astype(np.float32) / 32768.0
    return data, rate
