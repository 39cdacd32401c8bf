"""Tolerant video decoding: frames at a fixed rate by nearest presentation time, over damage.

Frame-rate conversion picks, for each output instant k / fps, the source frame whose presentation time is
nearest (no blending: a blend of two frames is a frame that never existed). Variable frame rate needs nothing
more. A packet the decoder refuses, or one it swallows silently (H.264 concealment), leaves a hole the previous
picture is held over, as ffmpeg's constant-rate output does; both are counted (``video_lost_frames``,
``video_held_s``). Timestamps that jump by more than MAX_HOLE_S, run backwards, or run far past the declared
duration are re-anchored one frame after the last (``timestamp_jumps``), so a corrupt timestamp can neither
stall the output nor make it run for hours. Only a file with no decodable picture is refused.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lpm.errors import MediaError
from lpm.media.container import (
    MAX_SOURCE_PIXELS,
    DecodeClock,
    PacketReader,
    declared_end,
    open_container,
    tail_lost,
)
from lpm.media.damage import DecodeDamage

# Frames are analysed at most this large (longest side): face detection needs no more, and decode stays cheap.
ANALYSIS_MAX_SIDE = 640
MAX_HOLE_S = 10.0  # a forward timestamp jump beyond this is a discontinuity, not lost frames
MAX_BACKSTEP_S = 0.5  # a backward step beyond this is a discontinuity (smaller ones: a reordering glitch)
FPS_RANGE = (1.0, 1000.0)  # a header frame rate outside this is not believed (24 fps assumed)


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


def _analysis_size(w: int, h: int) -> tuple[int, int]:
    scale = min(1.0, ANALYSIS_MAX_SIDE / max(w, h))
    # Even sizes keep chroma subsampling and later H.264 writes simple.
    return max(2, int(round(w * scale / 2)) * 2), max(2, int(round(h * scale / 2)) * 2)


def probe(path: str | Path) -> MediaInfo:
    """Read stream headers: size, frame rate, duration, audio channels (checked against the limits)."""
    path = Path(path)
    container = open_container(path, need="video")
    try:
        vs = container.streams.video[0]
        w, h = vs.codec_context.width, vs.codec_context.height
        if not w or not h:
            raise MediaError(f"{path}: the video stream has no frame size (a damaged header)")
        if w * h > MAX_SOURCE_PIXELS:
            raise MediaError(f"{path}: frame size {w}x{h} exceeds the limit of {MAX_SOURCE_PIXELS} pixels")
        rate = float(vs.average_rate or vs.guessed_rate or 24)
        if not FPS_RANGE[0] <= rate <= FPS_RANGE[1]:
            rate = 24.0
        end, _ = declared_end(container, vs)
        start = float(vs.start_time * vs.time_base) if vs.start_time is not None else 0.0
        duration = max(0.0, end - start) if end is not None else 0.0
        channels = 0
        if container.streams.audio and container.streams.audio[0].codec_context is not None:
            channels = len(container.streams.audio[0].codec_context.layout.channels) or 1
    finally:
        container.close()
    aw, ah = _analysis_size(w, h)
    return MediaInfo(path, aw, ah, w, h, rate, duration, channels)


@dataclass
class _Clock:
    """The source timeline as the resampler sees it: relative to the first frame, jumps re-anchored."""

    nominal: float  # one source frame, seconds
    limit: float | None  # the declared end relative to the first frame (None: unknown)
    t0: float | None = None
    offset: float = 0.0
    prev_t: float | None = None
    jumps: int = 0

    def place(self, time: float | None) -> float:
        if self.prev_t is None:
            self.t0 = time if time is not None else 0.0
            self.prev_t = 0.0
            return 0.0
        t = self.prev_t + self.nominal if time is None else time - self.t0 + self.offset
        too_far = self.limit is not None and t > self.limit + MAX_HOLE_S
        if t - self.prev_t > MAX_HOLE_S or t < self.prev_t - MAX_BACKSTEP_S or too_far:
            self.jumps += 1
            target = self.prev_t + self.nominal
            self.offset += target - t
            t = target
        self.prev_t = max(self.prev_t, t)
        return t


def _duration(frame) -> float | None:
    if frame.duration and frame.time_base is not None:
        return float(frame.duration * frame.time_base)
    return None


class FrameReader:
    """Iterate a video's frames resampled to ``fps`` at the analysis size; ``damage`` is final afterwards.

    Yields:
        (H, W, 3) uint8 RGB, H x W = info.height x info.width.

    Attributes:
        damage: what was lost, held or re-anchored (complete once iteration ends).
        num_frames: frames yielded.
    """

    def __init__(self, info: MediaInfo, fps: int = 24, clock: DecodeClock | None = None) -> None:
        self.info, self.fps = info, fps
        self.clock = clock or DecodeClock(info.path)
        self.damage = DecodeDamage()
        self.num_frames = 0

    def _decoded(self, container, stream,
                 reader: PacketReader) -> Iterator[tuple[float | None, float | None, np.ndarray]]:
        """(presentation time, duration, RGB picture) of every decodable frame; refused packets are counted."""
        import av

        info, clock, damage = self.info, self.clock, self.damage
        flushed = False
        for packet in reader:
            flushed = flushed or not packet.size
            try:
                with clock:
                    frames = packet.decode()
            except (av.FFmpegError, ValueError, MemoryError) as e:
                if packet.size:
                    damage.video_bad_packets += 1
                    damage.note(f"video: {e}")
                continue
            for frame in frames:
                try:
                    with clock:
                        img = frame.to_ndarray(format="rgb24", width=info.width, height=info.height)
                except (av.FFmpegError, ValueError, MemoryError) as e:
                    damage.note(f"video: {e}")
                    continue
                yield frame.time, _duration(frame), img
        if not flushed:  # the demuxer stopped early: drain the decoder's delayed frames
            with suppress(av.FFmpegError, ValueError, EOFError):
                with clock:
                    rest = stream.codec_context.decode(None)
                for frame in rest:
                    with clock:
                        img = frame.to_ndarray(format="rgb24", width=info.width, height=info.height)
                    yield frame.time, _duration(frame), img

    def __iter__(self) -> Iterator[np.ndarray]:
        info, fps, damage = self.info, self.fps, self.damage
        container = open_container(info.path, need="video")
        pictures, k = 0, 0
        try:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            reader = PacketReader(container, stream, damage, self.clock)
            nominal = 1.0 / info.source_fps
            end, _ = declared_end(container, stream)
            start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
            tl = _Clock(nominal, end - start if end is not None else None)
            prev, prev_t, prev_dur = None, 0.0, nominal
            for time, duration, img in self._decoded(container, stream, reader):
                pictures += 1
                t = tl.place(time)
                hole = t - (prev_t + prev_dur)
                if prev is not None and hole > 0.5 * prev_dur:  # more than half a frame missing: held over
                    damage.video_held_s += hole
                prev_dur = duration if duration is not None and 0 < duration < MAX_HOLE_S else nominal
                if prev is not None:
                    # Output instants up to the midpoint between two source frames take the earlier one.
                    while k / fps <= (prev_t + t) / 2:
                        yield prev
                        k += 1
                    self.num_frames = k
                    self.clock.check(k / fps)
                prev, prev_t = img, t
            if prev is None:
                why = f": {damage.messages[0]}" if damage.messages else ""
                raise MediaError(f"{info.path}: no decodable video frame ({reader.packets} packet(s), "
                                 f"{damage.video_bad_packets} refused by the decoder){why}")
            last = prev_t + 0.5 * nominal
            while k / fps <= last or k == 0:
                yield prev
                k += 1
            self.num_frames = k
            damage.timestamp_jumps += tl.jumps
            damage.video_lost_frames = max(0, reader.packets - pictures)
            decoded_end = tl.t0 + prev_t + prev_dur - tl.offset  # back on the stream clock
            damage.video_tail_lost_s = tail_lost(container, stream, reader, decoded_end, max(0.05, 1.5 * nominal))
        finally:
            container.close()
