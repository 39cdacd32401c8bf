"""Two-party dialogue scripts rendered to audio: turns, gaps, overlaps, backchannels, interruptions, laughs.

A ``Conversation`` holds the two mono tracks (self = the character, partner = the other party) and the list of
``Segment``s that produced them, with phonemes at absolute sample positions, so the controller knows the exact
ground truth of who said what when.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lpm.world import sentences
from lpm.world.speech import PARTNER_VOICES, SAMPLE_RATE, SELF_VOICES, Phoneme, Voice, synthesize

MODES = ("speak", "listen", "conversation", "idle")
MODE_WEIGHTS = (0.25, 0.25, 0.4, 0.1)

# Timing of the dialogue, in seconds.
GAP_RANGE = (-0.25, 0.9)  # negative = the next turn overlaps the previous one
LONG_SILENCE_PROB = 0.15
LONG_SILENCE_RANGE = (1.5, 3.0)
INTERRUPT_PROB = 0.3  # chance that the partner cuts into a long self turn (conversation mode)
INTERRUPT_MIN_TURN_S = 1.5
STOP_AFTER_INTERRUPT_S = (0.15, 0.35)  # the character stops talking this long after the partner starts
FADE_S = 0.03
NOISE_FLOOR = 2e-4  # a faint room noise so that silence is not digital zero


@dataclass
class Segment:
    """One vocalisation in the conversation (sample positions are absolute in the tracks)."""

    speaker: str  # "self" | "partner"
    kind: str  # "speech" | "backchannel" | "laugh"
    text: str
    start: int
    end: int
    phonemes: list[Phoneme] = field(default_factory=list)
    question: bool = False
    interrupted: bool = False  # a self turn cut short because the partner barged in

    def to_dict(self) -> dict:
        return {"speaker": self.speaker, "kind": self.kind, "text": self.text, "start": self.start,
                "end": self.end, "question": self.question, "interrupted": self.interrupted}


@dataclass
class Conversation:
    """Both audio tracks of a clip and the script that made them.

    Attributes:
        self_pcm, partner_pcm: (N,) float32 at 16 kHz.
    """

    self_pcm: np.ndarray
    partner_pcm: np.ndarray
    segments: list[Segment]
    mode: str
    self_voice: Voice
    partner_voice: Voice

    @property
    def num_samples(self) -> int:
        return int(self.self_pcm.shape[0])

    def stereo(self) -> np.ndarray:
        """(2, N): channel 0 = self, channel 1 = partner (the clip format's layout)."""
        return np.stack([self.self_pcm, self.partner_pcm]).astype(np.float32)


def _place(track: np.ndarray, pcm: np.ndarray, start: int, stop: int | None = None) -> int:
    """Add ``pcm`` into ``track`` at ``start``, cut at ``stop`` (with a short fade); returns the end sample."""
    end = min(track.shape[0], start + pcm.shape[0], stop if stop is not None else track.shape[0])
    if end <= start:
        return start
    piece = pcm[: end - start].copy()
    if end - start < pcm.shape[0]:  # cut short: fade out instead of a click
        fade = min(piece.shape[0], int(FADE_S * SAMPLE_RATE))
        piece[-fade:] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
    track[start:end] += piece
    return end


def _shift(phonemes: list[Phoneme], offset: int, stop: int) -> list[Phoneme]:
    out = []
    for p in phonemes:
        s, e = p.start + offset, min(p.end + offset, stop)
        if s < stop and e > s:
            out.append(Phoneme(p.symbol, s, e))
    return out


class _Builder:
    """Accumulates segments into two tracks of fixed length."""

    def __init__(self, n: int, rng: np.random.Generator, self_voice: Voice, partner_voice: Voice):
        self.n, self.rng = n, rng
        self.tracks = {"self": np.zeros(n, np.float32), "partner": np.zeros(n, np.float32)}
        self.voices = {"self": self_voice, "partner": partner_voice}
        self.gain = {"self": float(rng.uniform(0.6, 0.9)), "partner": float(rng.uniform(0.6, 0.9))}
        self.segments: list[Segment] = []

    def say(self, speaker: str, kind: str, text: str, start: int, stop: int | None = None,
            question: bool = False) -> Segment | None:
        if start >= self.n:
            return None
        utt = synthesize(text, self.voices[speaker])
        peak = float(np.abs(utt.pcm).max()) or 1.0
        pcm = utt.pcm * (self.gain[speaker] / peak)
        end = _place(self.tracks[speaker], pcm, start, stop)
        if end <= start:
            return None
        seg = Segment(speaker, kind, text, start, end, _shift(utt.phonemes, start, end), question,
                      interrupted=end < start + pcm.shape[0] and stop is not None)
        self.segments.append(seg)
        return seg


def _next_speaker(mode: str, last: str | None, rng: np.random.Generator) -> str:
    p_self = {"speak": 0.85, "listen": 0.12, "idle": 0.5}.get(mode)
    if p_self is None:  # conversation: alternate, sometimes the same party goes on
        if last is None:
            return "self" if rng.random() < 0.5 else "partner"
        return last if rng.random() < 0.25 else ("partner" if last == "self" else "self")
    return "self" if rng.random() < p_self else "partner"


def build_conversation(rng: np.random.Generator, num_samples: int, mode: str | None = None,
                       self_voice: Voice | None = None, partner_voice: Voice | None = None) -> Conversation:
    """Script a dialogue and synthesize both tracks.

    Args:
        rng: the clip's generator (all choices come from it: deterministic per seed).
        num_samples: length of both tracks at 16 kHz.
        mode: speak | listen | conversation | idle (drawn when None).
    """
    if mode is None:
        mode = str(rng.choice(MODES, p=MODE_WEIGHTS))
    if mode not in MODES:
        raise ValueError(f"unknown dialogue mode {mode!r}; expected one of {MODES}")
    self_voice = self_voice or SELF_VOICES[int(rng.integers(len(SELF_VOICES)))]
    partner_voice = partner_voice or PARTNER_VOICES[int(rng.integers(len(PARTNER_VOICES)))]
    b = _Builder(num_samples, rng, self_voice, partner_voice)
    sr = SAMPLE_RATE
    t = int(rng.uniform(0.2, 0.8) * sr)
    last = None
    while t < num_samples - int(0.5 * sr):
        if mode == "idle" and rng.random() < 0.7:
            t += int(rng.uniform(*LONG_SILENCE_RANGE) * sr)
            continue
        speaker = _next_speaker(mode, last, rng)
        lang = b.voices[speaker].language
        seg_end = t
        if speaker == "partner" and last == "self" and rng.random() < 0.12:
            seg = b.say("partner", "laugh", str(rng.choice(sentences.LAUGHS)), t)
        else:
            is_q = rng.random() < (0.35 if speaker == "partner" else 0.15)
            text = sentences.question(rng, lang) if is_q else sentences.statement(rng, lang)
            seg = None
            if speaker == "self" and mode in ("conversation", "speak") and rng.random() < INTERRUPT_PROB:
                # The partner barges in: it starts mid-turn and the character stops shortly after.
                probe = synthesize(text, b.voices["self"])
                dur = probe.pcm.shape[0] / sr
                if dur > INTERRUPT_MIN_TURN_S:
                    onset = t + int(rng.uniform(0.6, dur - 0.4) * sr)
                    stop = onset + int(rng.uniform(*STOP_AFTER_INTERRUPT_S) * sr)
                    seg = b.say("self", "speech", text, t, stop=stop, question=is_q)
                    other = sentences.question(rng, b.voices["partner"].language) if rng.random() < 0.3 \
                        else sentences.statement(rng, b.voices["partner"].language)
                    pseg = b.say("partner", "speech", other, onset, question=other.endswith("?"))
                    if pseg is not None:
                        seg_end = pseg.end
                        speaker = "partner"
            if seg is None:
                seg = b.say(speaker, "speech", text, t, question=is_q)
        if seg is not None:
            seg_end = max(seg_end, seg.end)
            if speaker == "partner" and seg.kind == "speech" and rng.random() < 0.5:
                # A short backchannel from the character at the partner's phrase end ("mm-hm").
                bc_start = seg.end + int(rng.uniform(0.1, 0.4) * sr)
                b.say("self", "backchannel", str(rng.choice(sentences.BACKCHANNELS)), bc_start)
        last = speaker
        gap = rng.uniform(*LONG_SILENCE_RANGE) if rng.random() < LONG_SILENCE_PROB else rng.uniform(*GAP_RANGE)
        t = max(t + int(0.3 * sr), seg_end + int(gap * sr))
    for name, track in b.tracks.items():
        track += (rng.standard_normal(num_samples) * NOISE_FLOOR).astype(np.float32)
        np.clip(track, -1.0, 1.0, out=track)
        b.tracks[name] = track
    b.segments.sort(key=lambda s: s.start)
    return Conversation(b.tracks["self"], b.tracks["partner"], b.segments, mode, self_voice, partner_voice)
