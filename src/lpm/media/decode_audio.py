"""Tolerant audio decoding: every channel at one sample rate, with holes filled with silence and counted.

A packet the decoder refuses is skipped (``audio_bad_packets``); the timeline is kept by the decoded frames'
presentation times, so the hole it leaves (or one the decoder leaves silently) becomes silence of its exact
length (``audio_silence_s``), as ffmpeg's ``aresample=async`` would. A jump in the timestamps larger than
MAX_HOLE_S (a reset, a splice, a corrupt timestamp) is re-anchored instead of filled. Only a file with no
decodable sample at all is refused.

Samples go through the resampler packed (``flt``): planar frames of more than 8 channels do not come out of
PyAV's ``to_ndarray`` intact.
"""

from __future__ import annotations

from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lpm.errors import MediaError
from lpm.media.container import DecodeClock, PacketReader, declared_end, open_container, tail_lost
from lpm.media.damage import DecodeDamage

SAMPLE_RATE = 16000  # the rate every lpm consumer uses
HOLE_TOLERANCE_S = 0.02  # timestamp mismatches below this are codec framing, not holes
MAX_HOLE_S = 10.0  # a forward jump beyond this (or any backward jump beyond MAX_OVERLAP_S) is a discontinuity
MAX_OVERLAP_S = 0.5
TAIL_SLACK_S = 0.1  # a declared end within this of the decoded end is codec framing (AAC priming), not truncation


@dataclass
class DecodedAudio:
    """A whole audio stream.

    Attributes:
        pcm: (C, N) float32 in [-1, 1] at ``rate`` (C: the first frame's channel count).
        rate: samples per second.
        start_s: the source presentation time of sample 0 (seconds, the container's clock).
        damage: what was skipped or filled.
    """

    pcm: np.ndarray
    rate: int
    start_s: float
    damage: DecodeDamage

    @property
    def seconds(self) -> float:
        return self.pcm.shape[1] / self.rate


class _Timeline:
    """Resampled blocks laid on the source timeline: holes become silence, overlaps are trimmed."""

    def __init__(self, rate: int, damage: DecodeDamage, limit_s: float | None) -> None:
        self.rate, self.damage, self.limit_s = rate, damage, limit_s
        self.blocks: list[np.ndarray] = []
        self.written = 0  # samples so far
        self.start_s: float | None = None  # source time of sample 0
        self.offset = 0.0  # added to source times after re-anchored jumps
        self.channels: int | None = None
        self._resampler = None
        self._key = None
        self._layout = None

    def _emit(self, frames, trim: int = 0) -> None:
        for out in frames:
            block = out.to_ndarray().reshape(-1, self.channels).T  # packed (1, N*C) -> (C, N)
            if trim:
                cut = min(trim, block.shape[1])
                block, trim = block[:, cut:], trim - cut
            if block.shape[1]:
                self.blocks.append(block.astype(np.float32, copy=False))
                self.written += block.shape[1]

    def _flush(self) -> None:
        if self._resampler is not None:
            self._emit(self._resampler.resample(None))
            self._resampler, self._key = None, None

    def add(self, frame) -> None:
        """Place one decoded frame at its presentation time (sequentially when it has none)."""
        import av

        if self.channels is None:
            self.channels, self._layout = len(frame.layout.channels), frame.layout
        t = frame.time
        trim = 0
        if t is not None:
            t += self.offset
            if self.start_s is None:
                self.start_s = t
            gap = t - (self.start_s + self.written / self.rate)
            beyond = self.limit_s is not None and t > self.limit_s + MAX_HOLE_S
            if gap > MAX_HOLE_S or gap < -MAX_OVERLAP_S or beyond:
                self.damage.timestamp_jumps += 1
                self.offset -= gap
            elif gap > HOLE_TOLERANCE_S:
                self._flush()  # the resampler's buffered samples belong before the hole
                hole = int(round(gap * self.rate))
                self.blocks.append(np.zeros((self.channels, hole), np.float32))
                self.written += hole
                self.damage.audio_silence_s += hole / self.rate
            elif gap < -HOLE_TOLERANCE_S:
                trim = int(round(-gap * self.rate))
        elif self.start_s is None:
            self.start_s = 0.0
        key = (frame.format.name, frame.layout.name, frame.sample_rate)
        if key != self._key:
            self._flush()
            # One output layout for the whole stream: a mid-stream layout change is remixed into the first.
            self._resampler = av.AudioResampler(format="flt", layout=self._layout, rate=self.rate)
            self._key = key
        self._emit(self._resampler.resample(frame), trim)

    def finish(self) -> np.ndarray:
        self._flush()
        if not self.blocks:
            return np.zeros((self.channels or 1, 0), np.float32)
        return np.clip(np.concatenate(self.blocks, axis=1), -1.0, 1.0)


def decode_audio(path: str | Path, rate: int = SAMPLE_RATE, clock: DecodeClock | None = None) -> DecodedAudio:
    """Decode the first audio stream of any file PyAV reads, over damage (see the module docstring).

    Raises:
        MediaError: no such file, not a media file, no audio stream, no decodable sample, or decoding ran past
            its time allowance.
    """
    import av

    path = Path(path)
    clock = clock or DecodeClock(path)
    damage = DecodeDamage()
    container = open_container(path, need="audio")
    try:
        stream = container.streams.audio[0]
        reader = PacketReader(container, stream, damage, clock)
        timeline = _Timeline(rate, damage, declared_end(container, stream)[0])
        flushed = False
        for packet in reader:
            flushed = flushed or not packet.size
            try:
                with clock:
                    frames = packet.decode()
                    for frame in frames:
                        timeline.add(frame)
            except (av.FFmpegError, ValueError, MemoryError) as e:
                if packet.size:
                    damage.audio_bad_packets += 1
                    damage.note(f"audio: {e}")
            clock.check(timeline.written / rate)
        if not flushed:  # the demuxer stopped early: drain the decoder's delayed frames
            with suppress(av.FFmpegError, ValueError, EOFError), clock:
                for frame in stream.codec_context.decode(None):
                    timeline.add(frame)
        pcm = timeline.finish()
        decoded_end = (timeline.start_s - timeline.offset + timeline.written / rate
                       if timeline.start_s is not None else None)
        damage.audio_tail_lost_s = tail_lost(container, stream, reader, decoded_end, TAIL_SLACK_S)
    finally:
        container.close()
    if pcm.shape[1] == 0:
        why = f": {damage.messages[0]}" if damage.messages else ""
        raise MediaError(f"{path}: no decodable audio ({reader.packets} packet(s), {damage.audio_bad_packets} "
                         f"refused by the decoder){why}")
    return DecodedAudio(pcm, rate, timeline.start_s or 0.0, damage)


def audio_for_video(path: str | Path, num_frames: int, fps: int = 24,
                    clock: DecodeClock | None = None) -> tuple[np.ndarray, DecodeDamage]:
    """A file's audio aligned to its first video frame and cut to ``num_frames`` at ``fps``.

    Streams may start at different times: sample 0 is the first video frame's instant. Video time the audio
    does not cover is silence (``audio_absent_s``); audio past the last frame is left out
    (``audio_past_video_s``). A file without an audio stream, or whose audio has no decodable sample, gives
    0 channels (all of it counted absent; the decoder's reason in ``damage.messages``): the video is still good.

    Returns:
        ((C, N) float32 at SAMPLE_RATE with N = num_frames * SAMPLE_RATE / fps, damage).
    """
    path = Path(path)
    n_out = int(round(num_frames * SAMPLE_RATE / fps))
    container = open_container(path)
    try:
        has_audio = bool(container.streams.audio)
        vs = container.streams.video[0] if container.streams.video else None
        v0 = float(vs.start_time * vs.time_base) if vs is not None and vs.start_time is not None else None
    finally:
        container.close()
    if not has_audio:
        return np.zeros((0, n_out), np.float32), DecodeDamage(audio_absent_s=n_out / SAMPLE_RATE)
    try:
        decoded = decode_audio(path, SAMPLE_RATE, clock)
    except MediaError as e:
        damage = DecodeDamage(audio_absent_s=n_out / SAMPLE_RATE)
        damage.note(str(e))
        return np.zeros((0, n_out), np.float32), damage
    audio, damage = decoded.pcm, decoded.damage
    offset = int(round((decoded.start_s - (v0 if v0 is not None else decoded.start_s)) * SAMPLE_RATE))
    if offset > 0:
        audio = np.pad(audio, ((0, 0), (offset, 0)))
    elif offset < 0:
        audio = audio[:, -offset:]
    past = max(0, audio.shape[1] - n_out) / SAMPLE_RATE
    absent = max(0, n_out - max(min(audio.shape[1], n_out) - max(offset, 0), 0)) / SAMPLE_RATE
    # Less than a frame either way is codec framing (AAC padding, a last partial frame), not a missing stream.
    damage.audio_past_video_s = past if past > 1 / fps else 0.0
    damage.audio_absent_s = absent if absent > 1 / fps else 0.0
    audio = audio[:, :n_out]
    if audio.shape[1] < n_out:
        audio = np.pad(audio, ((0, 0), (0, n_out - audio.shape[1])))
    return audio.astype(np.float32, copy=False), damage
