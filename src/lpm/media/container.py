"""Opening a container and reading its packets the way ffmpeg does with damaged input: never trust it to end.

- a demuxer error ends the read (ffmpeg treats it as the end of the input) and is counted, not raised;
- the time spent decoding a file is bounded (``DecodeClock``), so a pathological file is refused, never hung on;
- what the header declares (duration, size) is checked against limits before anything is decoded.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

from lpm.errors import MediaError
from lpm.media.damage import DecodeDamage

DECODE_BASE_S = 30.0  # decode time any file may take, whatever its length
DECODE_PER_MEDIA_S = 2.0  # plus this much per second of media decoded (normal files decode 20-200x faster)
MAX_SOURCE_PIXELS = 8192 * 8192  # a frame size beyond this in a header is refused before decoding


def open_container(path: Path, need: str | None = None):
    """``av.open`` with a one-line error; ``need`` ("video" / "audio") also requires such a stream."""
    import av  # imported here: PyAV is only needed when decoding

    if not path.is_file():
        raise MediaError(f"{path}: file does not exist")
    if path.stat().st_size == 0:
        raise MediaError(f"{path}: the file is empty (0 bytes)")
    try:
        container = av.open(str(path))
    except (av.FFmpegError, UnicodeDecodeError, ValueError, OSError) as e:
        raise MediaError(f"{path}: not a readable media file: {e}") from None
    if need is not None:
        streams = getattr(container.streams, need)
        if not streams:
            container.close()
            raise MediaError(f"{path}: no {need} stream")
        if streams[0].codec_context is None:
            container.close()
            raise MediaError(f"{path}: the {need} stream's codec is unknown (a damaged header?)")
    return container


class DecodeClock:
    """Wall time spent inside demuxing and decoding one file (not in whoever consumes the frames).

    A file whose decode takes longer than ``base_s + per_media_s * media seconds produced`` is refused with a
    MediaError: damaged input must not hang a job.
    """

    def __init__(self, path: Path, base_s: float = DECODE_BASE_S, per_media_s: float = DECODE_PER_MEDIA_S) -> None:
        self.path, self.base_s, self.per_media_s = path, base_s, per_media_s
        self.spent_s = 0.0
        self._t: float | None = None

    def __enter__(self) -> DecodeClock:
        self._t = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.spent_s += time.perf_counter() - self._t

    def check(self, media_s: float) -> None:
        """Raise when the decode time so far exceeds the allowance for ``media_s`` seconds of output."""
        allowed = self.base_s + self.per_media_s * max(0.0, media_s)
        if self.spent_s > allowed:
            raise MediaError(f"{self.path}: decoding took {self.spent_s:.1f} s for {media_s:.1f} s of media "
                             f"(limit {allowed:.1f} s): a damaged or pathological file, refused")


class PacketReader:
    """All packets of ``stream`` in file order; a demuxer error ends the stream (counted in ``damage``).

    Packets of the other streams are read past (the demuxer has to) and only their end times are kept, so a
    truncated file's tail is measured against the whole container.

    Attributes:
        ended_s: the latest packet end (seconds) over every stream; None before any packet.
        stream_ended_s: the latest packet end of ``stream`` itself.
        packets: non-empty packets of ``stream`` read.
    """

    def __init__(self, container, stream, damage: DecodeDamage, clock: DecodeClock) -> None:
        self.container, self.stream, self.damage, self.clock = container, stream, damage, clock
        self.ended_s: float | None = None
        self.stream_ended_s: float | None = None
        self.packets = 0

    def __iter__(self) -> Iterator:
        import av

        demux = self.container.demux()
        while True:
            try:
                with self.clock:
                    packet = next(demux)
            except StopIteration:
                return
            except (av.FFmpegError, ValueError, OSError, MemoryError) as e:  # ffmpeg: a read error ends the input
                self.damage.demux_errors += 1
                self.damage.note(f"demux: {e}")
                return
            mine = packet.stream.index == self.stream.index
            if packet.pts is not None and packet.time_base is not None and packet.size:
                end = float((packet.pts + (packet.duration or 0)) * packet.time_base)
                self.ended_s = end if self.ended_s is None else max(self.ended_s, end)
                if mine:
                    self.stream_ended_s = end if self.stream_ended_s is None else max(self.stream_ended_s, end)
            if mine:
                self.packets += bool(packet.size)
                yield packet


def declared_end(container, stream) -> tuple[float | None, bool]:
    """Where the stream should end (seconds, stream clock), and whether the stream itself declares it.

    Falls back to the container's duration (the longest stream's end) when the stream has none.
    """
    start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
    if stream.duration is not None and stream.time_base is not None and stream.duration > 0:
        return start + float(stream.duration * stream.time_base), True
    if container.duration is not None and container.duration > 0:
        c0 = container.start_time / 1_000_000 if container.start_time is not None else 0.0
        return c0 + container.duration / 1_000_000, False
    return None, False


def tail_lost(container, stream, reader: PacketReader, decoded_end: float | None, slack_s: float) -> float:
    """Declared seconds of ``stream`` past its last decoded content (a truncated file), 0 within ``slack_s``.

    With the stream's own declared duration: that end minus the decoded end. With only the container's (the
    longest stream's end): the stream's undecodable last packets plus the part of the container no stream
    reached, so a stream that simply ends before another is not called truncated.

    Args:
        decoded_end: where the last decoded frame ends (seconds, stream clock); None: nothing decoded.
    """
    end, own = declared_end(container, stream)
    if end is None:
        return 0.0
    start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
    reached = decoded_end if decoded_end is not None else start
    if own:
        lost = end - reached
    else:
        undecoded = max(0.0, (reader.stream_ended_s or reached) - reached)
        lost = undecoded + max(0.0, end - (reader.ended_s if reader.ended_s is not None else reached))
    return float(lost) if lost > slack_s else 0.0
