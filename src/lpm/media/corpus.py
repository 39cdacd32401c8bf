"""A corpus of damaged media with known truth: what was removed, where, and what a reader should make of it.

Each case is muxed packet by packet from given frames and audio (so the damage is exact: which packets are
garbage, dropped or re-timed), or cut / flipped at the byte level afterwards. The tests run every case through
the readers, ``lpm data ingest`` and ``lpm generate``; ``scripts/damage_corpus.py`` prints what each yields
(docs/measurements.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

AUDIO_BLOCK = 1024  # samples per audio frame handed to the encoder
PacketHook = Callable[[int, object], list]  # (packet index in its stream, packet) -> the packets to mux instead


@dataclass
class DamageCase:
    """One damaged file and the truth about it.

    Attributes:
        name: short id (also the file stem).
        kind: what was done to it, in words.
        path: the file.
        seconds: the video length before the damage (audio length for audio-only cases).
        refused: a reader must refuse it (nothing decodable).
        video_lost_s: video seconds removed inside the stream (None: not exactly known, e.g. random flips).
        audio_lost_s: audio seconds removed inside the stream.
        tail_s: seconds cut off the end (None: not exactly known; 0: none).
        audio_past_video_s: audio after the last video frame.
        audio_absent_s: video time without audio.
    """

    name: str
    kind: str
    path: Path
    seconds: float
    refused: bool = False
    video_lost_s: float | None = 0.0
    audio_lost_s: float | None = 0.0
    tail_s: float | None = 0.0
    audio_past_video_s: float = 0.0
    audio_absent_s: float = 0.0


def _garbage(packet, seed: int):
    """The same packet (timing, stream) with random bytes for its payload."""
    import av

    rng = np.random.default_rng(seed)
    bad = av.Packet(rng.integers(0, 256, max(8, packet.size), dtype=np.uint8).tobytes())
    bad.pts, bad.dts, bad.duration, bad.time_base = packet.pts, packet.dts, packet.duration, packet.time_base
    bad.stream = packet.stream
    return bad


def garbage_at(indices: set[int], seed: int = 0) -> PacketHook:
    """A hook replacing the payload of the packets at ``indices`` with random bytes (timing kept)."""
    return lambda i, p: [_garbage(p, seed + i)] if i in indices else [p]


def drop_at(indices: set[int]) -> PacketHook:
    """A hook leaving out the packets at ``indices`` (a hole in the container itself)."""
    return lambda i, p: [] if i in indices else [p]


def shift_from(index: int, seconds: float) -> PacketHook:
    """A hook moving every packet from ``index`` on by ``seconds`` (a timestamp discontinuity)."""

    def hook(i, p):
        if i >= index:
            delta = int(round(seconds / p.time_base))
            p.pts = p.pts + delta if p.pts is not None else None
            p.dts = p.dts + delta if p.dts is not None else None
        return [p]

    return hook


def mux(path: Path, frames: np.ndarray | None, times: np.ndarray | None, audio: np.ndarray | None, rate: int = 48000,
        vcodec: str = "mpeg4", acodec: str = "aac", fmt: str = "matroska", layout: str = "stereo",
        audio_start_s: float = 0.0, video_hook: PacketHook | None = None,
        audio_hook: PacketHook | None = None, options: dict[str, str] | None = None, gop: int = 1) -> Path:
    """Encode frames (at their own times) and audio into one file, packets interleaved by time.

    Args:
        frames: (F, H, W, 3) uint8 or None (no video stream); ``times``: (F,) presentation seconds.
        audio: (C, N) float in [-1, 1] at ``rate`` or None (no audio stream); C matches ``layout``.
        audio_start_s: presentation time of the first audio sample.
        video_hook, audio_hook: rewrite packets before muxing (``garbage_at``, ``drop_at``, ``shift_from``).
        options: muxer options (e.g. ``{"movflags": "faststart"}``: the mp4 index first).
        gop: frames per keyframe (1: every frame intra-coded, so a lost frame damages nothing but itself).
    """
    import av

    packets = []
    with av.open(str(path), "w", format=fmt, options=options or {}) as c:
        if frames is not None:
            fps = max(1, round((len(times) - 1) / max(times[-1] - times[0], 1e-6))) if len(times) > 1 else 24
            vs = c.add_stream(vcodec, rate=fps)
            vs.height, vs.width = frames.shape[1:3]
            vs.pix_fmt = "yuv420p"
            vs.codec_context.gop_size = gop
            tb = Fraction(1, fps) if fmt == "avi" else Fraction(1, 1000)
            vs.codec_context.time_base = tb
            out = []
            for img, t in zip(frames, times):
                vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
                vf.pts, vf.time_base = int(round(t / tb)), tb
                out += vs.encode(vf)
            out += vs.encode()
            for i, p in enumerate(out):
                packets += video_hook(i, p) if video_hook else [p]
        if audio is not None:
            ast = c.add_stream(acodec, rate=rate)
            ast.layout = layout
            pcm = np.clip(audio, -1, 1).astype(np.float32)
            start = int(round(audio_start_s * rate))
            out = []
            for i in range(0, pcm.shape[1], AUDIO_BLOCK):
                block = np.ascontiguousarray(pcm[:, i:i + AUDIO_BLOCK])
                if acodec.startswith("pcm_s16"):
                    af = av.AudioFrame.from_ndarray((block.T * 32767).astype(np.int16).reshape(1, -1), format="s16",
                                                    layout=layout)
                else:  # packed: PyAV's planar from_ndarray stops at 8 channels
                    af = av.AudioFrame.from_ndarray(np.ascontiguousarray(block.T).reshape(1, -1), format="flt",
                                                    layout=layout)
                af.sample_rate, af.pts, af.time_base = rate, start + i, Fraction(1, rate)
                out += ast.encode(af)
            out += ast.encode()
            for i, p in enumerate(out):
                packets += audio_hook(i, p) if audio_hook else [p]
        packets.sort(key=lambda p: float((p.dts if p.dts is not None else p.pts or 0) * p.time_base))
        c.start_encoding()  # the header is written even when every packet was left out
        for p in packets:
            c.mux(p)
    return path


def truncate(src: Path, dst: Path, fraction: float) -> Path:
    """The first ``fraction`` of a file's bytes."""
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


def flip_bytes(src: Path, dst: Path, count: int, seed: int, skip: int = 4096) -> Path:
    """``count`` random bytes after the first ``skip`` (the header) inverted."""
    data = bytearray(src.read_bytes())
    rng = np.random.default_rng(seed)
    for i in rng.integers(min(skip, len(data) - 1), len(data), count):
        data[i] ^= 0xFF
    dst.write_bytes(bytes(data))
    return dst


def cut_inside_last_audio_packet(src: Path, dst: Path) -> tuple[Path, float]:
    """The file cut in the middle of its last audio packet (a truncated last audio frame, common in cut AVI /
    AC-3 captures); returns (path, seconds of audio the cut removes: that packet's duration)."""
    import av

    with av.open(str(src)) as c:
        last = None
        for p in c.demux(c.streams.audio[0]):
            if p.size and p.pos is not None and p.pos >= 0:
                last = (p.pos, p.size, float(p.duration * p.time_base) if p.duration else 0.0)
    pos, size, duration = last
    data = src.read_bytes()
    dst.write_bytes(data[: pos + size // 2])
    return dst, duration


def ramp_content(seconds: float, fps: int = 25, size: tuple[int, int] = (64, 96), rate: int = 48000,
                 channels: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frames whose grey level is 4x their index, their times, and a 440 Hz tone on every channel.

    Returns:
        ((F, H, W, 3) uint8, (F,) seconds, (C, N) float32).
    """
    n = int(round(seconds * fps))
    frames = np.stack([np.full((*size, 3), (4 * i) % 256, np.uint8) for i in range(n)])
    t = np.arange(int(round(seconds * rate))) / rate
    tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    return frames, np.arange(n) / fps, np.stack([tone] * channels)


def build_corpus(root: Path, frames: np.ndarray, audio: np.ndarray, fps: int = 25, rate: int = 48000,
                 seed: int = 0) -> list[DamageCase]:
    """Every damage kind made from the same content (frames at ``fps``, stereo ``audio`` at ``rate``).

    The content should be 2-4 s long; the cases are small files in ``root``.
    """
    root.mkdir(parents=True, exist_ok=True)
    times = np.arange(len(frames)) / fps
    seconds = len(frames) / fps
    block_s = AUDIO_BLOCK / rate
    mid = len(frames) // 2
    cases: list[DamageCase] = []

    def case(name: str, kind: str, ext: str = "mkv", **kw) -> Path:
        path = root / f"{name}.{ext}"
        cases.append(DamageCase(name, kind, path, kw.pop("seconds", seconds), **kw))
        return path

    clean = mux(case("clean", "undamaged control (mpeg4 + aac in mkv)"), frames, times, audio, rate)
    mux(case("clean_mp4", "undamaged control (mpeg4 + aac in mp4)", "mp4"), frames, times, audio, rate, fmt="mp4")
    for frac in (0.3, 0.6, 0.9):
        truncate(clean, case(f"truncated_{int(frac * 100)}", f"mkv cut at {int(frac * 100)}% of its bytes",
                             tail_s=None), frac)
    mux(root / "faststart.mp4", frames, times, audio, rate, fmt="mp4", options={"movflags": "faststart"})
    mux(root / "index_last.mp4", frames, times, audio, rate, fmt="mp4")
    avi = mux(root / "ac3.avi", frames, times, audio, rate, fmt="avi", acodec="ac3")
    cut_inside_last_audio_packet(avi, case("last_audio_frame_cut", "AVI (mpeg4 + AC-3) cut inside its last audio "
                                           "packet", "avi", tail_s=None))
    (root / "ac3.avi").unlink()
    bad_audio = {10, 11, 40}
    mux(case("bad_audio_packets", f"{len(bad_audio)} AAC packets replaced by random bytes",
             audio_lost_s=None), frames, times, audio, rate, audio_hook=garbage_at(bad_audio, seed))
    bad_video = {mid - 5, mid + 5}
    mux(case("bad_video_packets", f"{len(bad_video)} mpeg4 packets replaced by random bytes",
             video_lost_s=len(bad_video) / fps), frames, times, audio, rate, video_hook=garbage_at(bad_video, seed))
    drop_video = set(range(mid, mid + 6))
    mux(case("dropped_video_packets", f"{len(drop_video)} video packets missing from the container",
             video_lost_s=len(drop_video) / fps), frames, times, audio, rate, video_hook=drop_at(drop_video))
    drop_audio = set(range(20, 30))
    mux(case("dropped_audio_packets", f"{len(drop_audio)} audio packets missing from the container",
             audio_lost_s=len(drop_audio) * block_s), frames, times, audio, rate, audio_hook=drop_at(drop_audio))
    for k, count in enumerate((20, 200)):
        flip_bytes(clean, case(f"flipped_{count}", f"{count} random bytes inverted", video_lost_s=None,
                               audio_lost_s=None, tail_s=None), count, seed + k)
    mux(case("no_audio", "no audio track", audio_absent_s=seconds), frames, times, None, rate)
    mux(case("audio_only", "no video track (refused by video readers)", "m4a", refused=True), None, None, audio,
        rate, fmt="mp4")
    empty = case("zero_length_video", "a video stream without a single packet", refused=True)
    mux(empty, frames[:2], times[:2], None, rate, video_hook=drop_at({0, 1, 2, 3}))
    mux(case("empty_audio_stream", "an audio stream without a single packet", audio_absent_s=seconds), frames, times,
        audio, rate, audio_hook=drop_at(set(range(10**6))))
    case("zero_bytes", "an empty file", refused=True).write_bytes(b"")
    vfr = np.concatenate([[0.0], np.cumsum(np.where(np.arange(len(frames)) % 2 == 0, 1 / 30, 1 / 15))])
    n_vfr = int(np.searchsorted(vfr, seconds - 1 / 15, side="right"))  # frames whose display ends in time
    vfr_end = float(vfr[n_vfr])
    mux(case("vfr", "variable frame rate (1/30 s and 1/15 s frames alternating)", seconds=vfr_end),
        frames[:n_vfr], vfr[:n_vfr], audio[:, : int(round(vfr_end * rate))], rate)
    mux(case("timestamp_jump", "every packet from the middle on stamped one hour later"), frames, times, audio,
        rate, video_hook=shift_from(mid, 3600.0), audio_hook=shift_from(int(mid / fps / block_s), 3600.0))
    short_video = len(frames) * 2 // 3
    mux(case("video_ends_first", "video ends a third before its audio", seconds=short_video / fps,
             audio_past_video_s=seconds - short_video / fps), frames[:short_video], times[:short_video], audio, rate)
    short_audio = audio[:, : audio.shape[1] * 2 // 3]
    mux(case("audio_ends_first", "audio ends a third before the video", audio_absent_s=seconds / 3), frames, times,
        short_audio, rate)
    mono = audio[:1]
    mux(case("mono_8k", "mono audio at 8 kHz", "mkv"), frames, times,
        _resample(mono, rate, 8000), 8000, acodec="flac", layout="mono")
    mux(case("surround_5_1_44k", "5.1 audio at 44.1 kHz"), frames, times, _resample(np.repeat(mono, 6, 0), rate, 44100),
        44100, acodec="flac", layout="5.1")
    mux(case("surround_7_1", "7.1 audio (8 channels) at 48 kHz"), frames, times, np.repeat(mono, 8, 0), rate,
        acodec="flac", layout="7.1")
    mux(case("three_channels_22k", "2.1 audio (3 channels) at 22.05 kHz", "mkv"), frames, times,
        _resample(np.repeat(mono, 3, 0), rate, 22050), 22050, acodec="flac", layout="2.1")
    truncate(root / "faststart.mp4", case("truncated_mp4", "mp4 (index first) cut at 60% of its bytes", "mp4",
                                          tail_s=None), 0.6)
    truncate(root / "index_last.mp4", case("truncated_mp4_index_last", "mp4 (index last) cut at 60%: no index, "
                                           "nothing decodable", "mp4", refused=True), 0.6)
    for name in ("faststart.mp4", "index_last.mp4"):
        (root / name).unlink()
    return cases


def _resample(audio: np.ndarray, rate: int, new_rate: int) -> np.ndarray:
    """Linear resampling (test content only)."""
    n = int(round(audio.shape[1] * new_rate / rate))
    x = np.arange(n) * rate / new_rate
    return np.stack([np.interp(x, np.arange(audio.shape[1]), ch) for ch in audio]).astype(np.float32)
