"""Decode any container PyAV reads into frames at the clip frame rate and 16 kHz audio with its channels kept.

Frame-rate conversion picks, for each output instant k / fps, the source frame whose presentation time is
nearest (no blending: a blend of two frames is a frame that never existed).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lpm.data.video import MediaError

SAMPLE_RATE = 16000
# Frames are analysed at most this large (longest side): face detection needs no more, and decode stays cheap.
ANALYSIS_MAX_SIDE = 640


@dataclass
class MediaInfo:
    """What a probe of a file says before decoding it."""

    path: Path
    width: int  # analysis size (after the ANALYSIS_MAX_SIDE downscale)
    height: int
    source_width: int
    source_height: int
    source_fps: float
    duration_s: float
    audio_channels: int  # 0 when the file has no audio stream

    @property
    def expected_frames(self) -> int:
        """Frames at 24 fps the duration implies (for progress bars; the decode gives the exact count)."""
        return max(1, round(self.duration_s * 24))


def _open(path: Path, need_video: bool = True):
    import av  # imported here: PyAV is only needed when decoding

    if not path.is_file():
        raise MediaError(f"{path}: file does not exist")
    try:
        container = av.open(str(path))
    except (av.FFmpegError, UnicodeDecodeError, ValueError) as e:
        raise MediaError(f"{path}: not a readable media file: {e}") from None
    if need_video and not container.streams.video:
        container.close()
        raise MediaError(f"{path}: no video stream")
    return container


def _analysis_size(w: int, h: int) -> tuple[int, int]:
    scale = min(1.0, ANALYSIS_MAX_SIDE / max(w, h))
    # Even sizes keep chroma subsampling and later H.264 writes simple.
    return max(2, int(round(w * scale / 2)) * 2), max(2, int(round(h * scale / 2)) * 2)


def probe(path: str | Path) -> MediaInfo:
    """Read stream headers: size, frame rate, duration, audio channels."""
    path = Path(path)
    container = _open(path)
    try:
        vs = container.streams.video[0]
        w, h = vs.codec_context.width, vs.codec_context.height
        if not w or not h:
            raise MediaError(f"{path}: video stream has no frame size")
        rate = vs.average_rate or vs.guessed_rate or 24
        if vs.duration is not None and vs.time_base is not None:
            duration = float(vs.duration * vs.time_base)
        elif container.duration is not None:
            duration = container.duration / 1_000_000
        else:
            duration = 0.0
        channels = container.streams.audio[0].codec_context.channels if container.streams.audio else 0
    finally:
        container.close()
    aw, ah = _analysis_size(w, h)
    return MediaInfo(path, aw, ah, w, h, float(rate), duration, channels)


def iter_frames(info: MediaInfo, fps: int = 24) -> Iterator[np.ndarray]:
    """Frames resampled to ``fps`` by nearest presentation time, at the analysis size.

    Yields:
        (H, W, 3) uint8 RGB, H x W = info.height x info.width.
    """
    import av

    container = _open(info.path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        prev, prev_t, t0, k = None, 0.0, None, 0
        for frame in container.decode(stream):
            t = frame.time if frame.time is not None else (prev_t + 1.0 / info.source_fps if prev is not None else 0.0)
            if t0 is None:
                t0 = t
            t -= t0
            img = frame.to_ndarray(format="rgb24", width=info.width, height=info.height)
            if prev is not None:
                # Output instants up to the midpoint between two source frames take the earlier one.
                while k / fps <= (prev_t + t) / 2:
                    yield prev
                    k += 1
            prev, prev_t = img, t
        if prev is not None:
            last = prev_t + 0.5 / max(info.source_fps, 1e-3)
            while k / fps <= last or k == 0:
                yield prev
                k += 1
    except av.FFmpegError as e:
        raise MediaError(f"{info.path}: cannot decode video: {e}") from None
    finally:
        container.close()


def read_audio(path: str | Path, num_frames: int, fps: int = 24) -> np.ndarray:
    """All audio channels resampled to 16 kHz, aligned to the first video frame (if any), cut to ``num_frames``.

    Returns:
        (C, N) float32 in [-1, 1], N = num_frames * 16000 / fps; C = 0 rows when there is no audio stream.
    """
    import av

    path = Path(path)
    n_out = int(round(num_frames * SAMPLE_RATE / fps))
    container = _open(path, need_video=False)  # audio-only files serve as partner sidecars
    try:
        if not container.streams.audio:
            return np.zeros((0, n_out), np.float32)
        stream = container.streams.audio[0]
        channels = stream.codec_context.channels or 1
        layout = stream.codec_context.layout.name if stream.codec_context.layout else None
        resampler = av.AudioResampler(format="fltp", layout=layout, rate=SAMPLE_RATE)
        chunks, first_t = [], None
        for frame in container.decode(stream):
            if first_t is None and frame.time is not None:
                first_t = frame.time
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(channels, -1))
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().reshape(channels, -1))
        vs = container.streams.video[0] if container.streams.video else None
        v0 = float(vs.start_time * vs.time_base) if vs is not None and vs.start_time is not None else first_t or 0.0
    except av.FFmpegError as e:
        raise MediaError(f"{path}: cannot decode audio: {e}") from None
    finally:
        container.close()
    audio = np.concatenate(chunks, axis=1) if chunks else np.zeros((channels, 0), np.float32)
    # Shift so sample 0 is the first video frame's instant (streams may start at different times).
    offset = int(round(((first_t or 0.0) - v0) * SAMPLE_RATE))
    if offset > 0:
        audio = np.pad(audio, ((0, 0), (offset, 0)))
    elif offset < 0:
        audio = audio[:, -offset:]
    audio = audio[:, :n_out]
    if audio.shape[1] < n_out:
        audio = np.pad(audio, ((0, 0), (0, n_out - audio.shape[1])))
    return np.clip(audio, -1.0, 1.0).astype(np.float32)
