"""What a tolerant decode skipped, filled or lost: counted per file, merged over a run, printed as one line."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

MAX_MESSAGES = 4  # distinct decoder messages kept per file (the first ones; the counts hold the rest)


@dataclass
class DecodeDamage:
    """Damage met while decoding one file (or the sum over many). Seconds are media seconds.

    Every second of the source that did not come through as decoded content is in exactly one of
    ``video_held_s`` / ``audio_silence_s`` (a hole inside the stream, filled the way ffmpeg fills it) or
    ``video_tail_lost_s`` / ``audio_tail_lost_s`` (the stream's declared length not delivered: a truncated file).
    Where one stream is shorter than the other, ``audio_absent_s`` / ``audio_past_video_s`` say how much of the
    video had no sound (silence) and how much sound had no video (left out of video-aligned output).
    """

    video_bad_packets: int = 0  # packets the video decoder refused (skipped)
    video_lost_frames: int = 0  # packets that gave no picture: refused, or dropped by the decoder's concealment
    video_held_s: float = 0.0  # the previous picture held over the lost frames
    video_tail_lost_s: float = 0.0  # declared video duration past the last decodable picture
    audio_bad_packets: int = 0  # packets the audio decoder refused (skipped)
    audio_silence_s: float = 0.0  # holes in the audio timeline filled with silence
    audio_tail_lost_s: float = 0.0  # declared audio duration past the last decodable sample
    audio_absent_s: float = 0.0  # video time with no audio (no track, or the track starts late / ends early)
    audio_past_video_s: float = 0.0  # audio after the last video frame (a video ending before its audio)
    timestamp_jumps: int = 0  # timeline discontinuities re-anchored (not filled: they are not lost media)
    demux_errors: int = 0  # the container stopped being readable (the rest of the file is the tail lost)
    messages: list[str] = field(default_factory=list)  # the first distinct decoder / demuxer messages

    def note(self, message: str) -> None:
        """Keep a decoder message (the first MAX_MESSAGES distinct ones)."""
        message = message.strip()
        if message and message not in self.messages and len(self.messages) < MAX_MESSAGES:
            self.messages.append(message)

    @property
    def damaged_s(self) -> float:
        """Media seconds not decoded as content: filled holes plus truncated tails (video and audio apart)."""
        return self.video_held_s + self.video_tail_lost_s + self.audio_silence_s + self.audio_tail_lost_s

    @property
    def any(self) -> bool:
        return any(getattr(self, f.name) for f in fields(self) if f.name != "messages")

    def merge(self, other: DecodeDamage) -> DecodeDamage:
        """The sum of two damage records (messages: the first distinct ones of both)."""
        out = DecodeDamage()
        for f in fields(self):
            if f.name != "messages":
                setattr(out, f.name, getattr(self, f.name) + getattr(other, f.name))
        for m in self.messages + other.messages:
            out.note(m)
        return out

    def summary(self) -> str:
        """One line for a warning: what was skipped and how many seconds it cost (empty when undamaged)."""
        parts = []
        if self.video_lost_frames or self.video_held_s:
            parts.append(f"{self.video_lost_frames} video frame(s) lost ({self.video_bad_packets} refused by the "
                         f"decoder), previous frame held over {self.video_held_s:.2f} s of holes")
        if self.audio_bad_packets or self.audio_silence_s:
            parts.append(f"{self.audio_bad_packets} bad audio packet(s), {self.audio_silence_s:.2f} s of silence "
                         "filled in")
        if self.video_tail_lost_s or self.audio_tail_lost_s:
            parts.append(f"truncated: {self.video_tail_lost_s:.2f} s video / {self.audio_tail_lost_s:.2f} s audio "
                         "past the last decodable data")
        if self.audio_absent_s:
            parts.append(f"{self.audio_absent_s:.2f} s of video without audio (silence)")
        if self.audio_past_video_s:
            parts.append(f"{self.audio_past_video_s:.2f} s of audio after the last video frame left out")
        if self.timestamp_jumps:
            parts.append(f"{self.timestamp_jumps} timestamp jump(s) re-anchored")
        if self.demux_errors:
            parts.append(f"container unreadable after a point ({self.demux_errors}x)")
        if not parts:
            return ""
        why = f" [{self.messages[0]}]" if self.messages else ""
        return f"{'; '.join(parts)}; {self.damaged_s:.2f} s damaged in all{why}"
