"""Speech synthesis through espeak-ng's C library (ctypes), with every phoneme's exact sample position.

espeak-ng synthesizes at its own rate (22050 Hz) and reports a phoneme event carrying the output sample index
at which the phoneme begins. Audio and event positions are both resampled to 16 kHz with the same rational
ratio, so positions stay exact by construction.

Silence: espeak pads an utterance with a short lead-in and a sentence-final pause. ``synthesize`` trims both
down to ``EDGE_MARGIN_S`` around the audible speech and shifts every phoneme and word position alike, so an
utterance's pcm starts and ends close to speech and can be placed on a longer track at a known offset.

The library holds global state (one voice, one callback) and carries synthesis state from call to call, so
it runs in a small helper process (one per lpm process, started lazily under a lock) that initialises it
once and serves every request from a fresh fork of that pristine state: the same text and voice give the
same pcm, bit for bit. A process forked from one that already used it starts its own helper.
"""

from __future__ import annotations

import ctypes
import os
import pickle
import struct
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from math import gcd
from pathlib import Path

import numpy as np

from lpm.errors import LpmError

SAMPLE_RATE = 16000

# Where the shared library and its data are looked for, in order; LPM_ESPEAK_LIB overrides.
_LIBRARY_CANDIDATES: tuple[str, ...] = (
    "/usr/lib/x86_64-linux-gnu/libespeak-ng.so.1",
    "/usr/lib/aarch64-linux-gnu/libespeak-ng.so.1",
    "/usr/lib/libespeak-ng.so.1",
    "/usr/local/lib/libespeak-ng.so.1",
    "/opt/homebrew/lib/libespeak-ng.dylib",
    "libespeak-ng.so.1",
    "libespeak-ng.so",
)

# espeak-ng speak_lib.h constants (API revision 12).
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_PHONEME_EVENTS = 0x0001
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_EVENT_LIST_TERMINATED = 0
_EVENT_WORD = 1
_EVENT_PHONEME = 7
_PARAM_RATE = 1
_PARAM_VOLUME = 2
_PARAM_PITCH = 3
_PARAM_RANGE = 4
_PARAM_WORDGAP = 7
_EE_OK = 0
_RAND_SEED = 12345
# Callback buffer length in ms (0 would mean espeak's default of 60 ms; the length only affects chunking).
_BUFFER_MS = 100

# Language tags whose espeak voice file is named differently (espeak_SetVoiceByName matches file names).
_LANGUAGE_ALIASES: dict[str, str] = {"en-gb": "en", "fr-fr": "fr", "es-es": "es", "de-de": "de"}

# Trimming: samples whose magnitude stays below this fraction of the peak count as silence.
SILENCE_REL_THRESHOLD = 0.01
EDGE_MARGIN_S = 0.02  # kept around speech (under half a frame, so a speaking frame holds speech)
# Phoneme events may sit up to this many espeak samples outside the callback buffer that carries them
# (espeak emits the event a few samples before flushing its wave buffer); larger disagreement is an error.
_EVENT_SAMPLE_TOLERANCE = 2048

# espeak pause / boundary mnemonics start with "_" (short, long, glottal pauses), "|" or "*" (e.g. the "**"
# espeak emits for an inverted question mark).
_PAUSE_PREFIXES = ("_", "|", "*")
# Stress / syllabicity marks that may precede a mnemonic.
STRESS_MARKS = "'\",%="
# First characters of espeak vowel mnemonics (Kirshenbaum-style ASCII; digits 0/2/3/6/8/9 are vowels there).
_VOWEL_HEADS = set("aeiouyAEIOUVWY@{&3026789")


@dataclass(frozen=True)
class Voice:
    """An espeak-ng voice: language, variant and prosody."""

    language: str = "en-us"  # espeak language name (en-us, en-gb, fr, de, es, ...)
    variant: str = "m3"  # espeak variant file under voices/!v (m1..m7, f1..f5, ...); "" for the default
    rate: int = 160  # words per minute (espeak accepts 80..450)
    pitch: int = 50  # base pitch 0..100 (50 = the voice's normal)
    pitch_range: int = 50  # intonation range 0..100 (0 = monotone)
    volume: int = 100  # 0..200 (100 = normal; above it compresses)
    word_gap: int = 0  # extra pause between words, in units of 10 ms

    @property
    def espeak_name(self) -> str:
        """The name espeak_SetVoiceByName takes, ``language+variant``."""
        language = _LANGUAGE_ALIASES.get(self.language, self.language)
        return f"{language}+{self.variant}" if self.variant else language


# The character's own voices and its conversation partner's voices never share a (language, variant, pitch).
SELF_VOICES: tuple[Voice, ...] = (
    Voice("en-us", "m3", rate=160, pitch=45),
    Voice("en-us", "f2", rate=170, pitch=60),
    Voice("en-gb", "m1", rate=150, pitch=40),
    Voice("en-gb", "f3", rate=165, pitch=65),
    Voice("fr", "m2", rate=155, pitch=50),
    Voice("de", "f1", rate=150, pitch=55),
    Voice("es", "m4", rate=175, pitch=45),
)
PARTNER_VOICES: tuple[Voice, ...] = (
    Voice("en-us", "m7", rate=150, pitch=35),
    Voice("en-us", "f4", rate=180, pitch=70),
    Voice("en-gb", "m5", rate=170, pitch=50),
    Voice("fr", "f5", rate=160, pitch=60),
    Voice("de", "m6", rate=145, pitch=40),
    Voice("es", "f1", rate=165, pitch=65),
)


@dataclass(frozen=True)
class Phoneme:
    """One phoneme: espeak mnemonic and its [start, end) sample span at 16 kHz within the utterance pcm."""

    symbol: str
    start: int
    end: int


@dataclass
class Utterance:
    """Synthesized speech with its phoneme and word timing (all sample indices at 16 kHz)."""

    text: str
    voice: Voice
    pcm: np.ndarray  # (N,) float32 in [-1, 1] at SAMPLE_RATE
    phonemes: list[Phoneme]
    words: list[tuple[int, str]] = field(default_factory=list)  # (start sample, word)

    @property
    def duration_s(self) -> float:
        """Length of the pcm in seconds."""
        return len(self.pcm) / SAMPLE_RATE


class EspeakUnavailableError(LpmError):
    """espeak-ng's shared library (or its data) could not be loaded."""


def is_pause(symbol: str) -> bool:
    """True for espeak's pause / boundary pseudo-phonemes (``_``, ``_:``, ``_!``, ``||``)."""
    return symbol == "" or symbol.startswith(_PAUSE_PREFIXES)


def is_vowel(symbol: str) -> bool:
    """True when an espeak phoneme mnemonic names a vowel or diphthong (syllabic consonants excluded)."""
    if is_pause(symbol):
        return False
    head = symbol.lstrip(STRESS_MARKS)
    return bool(head) and head[0] in _VOWEL_HEADS


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    """espeak_EVENT from speak_lib.h."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),  # 1-based character position in the text
        ("length", ctypes.c_int),  # word length in characters (WORD events)
        ("audio_position", ctypes.c_int),  # ms within the generated speech
        ("sample", ctypes.c_int),  # output sample index at espeak's rate
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event)
)


@dataclass
class _Capture:
    """What one synthesis call collects from the callback (espeak's sample rate)."""

    chunks: list[np.ndarray] = field(default_factory=list)
    received: int = 0  # samples received so far
    phonemes: list[tuple[int, str]] = field(default_factory=list)  # (espeak sample, mnemonic)
    phoneme_ms: list[int] = field(default_factory=list)  # each phoneme's audio_position (ms), for checks
    # (espeak sample, 1-based text position, length in characters)
    words: list[tuple[int, int, int]] = field(default_factory=list)
    misplaced: list[tuple[str, int, int]] = field(default_factory=list)  # events outside their buffer


class _Engine:
    """The process's one espeak-ng instance (the C library keeps a single global state)."""

    def __init__(self) -> None:
        self.lib, self.path = _load_library()
        self.libc = ctypes.CDLL(None)  # the process's C library, whose rand() espeak uses
        self.lib.espeak_Initialize.restype = ctypes.c_int
        self.lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        self.lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        self.lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self.lib.espeak_SetVoiceByName.restype = ctypes.c_int
        self.lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        self.lib.espeak_SetParameter.restype = ctypes.c_int
        self.lib.espeak_Synth.argtypes = [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
            ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
        ]  # fmt: skip
        self.lib.espeak_Synth.restype = ctypes.c_int
        self.rate = self.lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, _BUFFER_MS, None, _INITIALIZE_PHONEME_EVENTS
        )
        if self.rate <= 0:
            raise EspeakUnavailableError(
                f"espeak-ng loaded from {self.path} but failed to initialise (no espeak-ng-data?); "
                "install the espeak-ng-data package (apt-get install espeak-ng)"
            )
        self.capture = _Capture()
        # Keep a reference: ctypes frees the trampoline when the Python object dies.
        self._callback = _SynthCallback(self._on_synth)
        self.lib.espeak_SetSynthCallback(self._callback)
        g = gcd(SAMPLE_RATE, self.rate)
        self.up, self.down = SAMPLE_RATE // g, self.rate // g  # 320 / 441 for 22050 Hz

    def _on_synth(self, wav, numsamples: int, events) -> int:
        begin = self.capture.received
        if wav and numsamples > 0:
            self.capture.chunks.append(np.ctypeslib.as_array(wav, shape=(numsamples,)).copy())
            self.capture.received += numsamples
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            ev = events[i]
            if ev.type == _EVENT_PHONEME:
                symbol = ev.id.string.decode("utf-8", "replace")
                self.capture.phonemes.append((ev.sample, symbol))
                self.capture.phoneme_ms.append(ev.audio_position)
                # The event belongs to the audio delivered with it: check the position against that buffer.
                lo, hi = begin - _EVENT_SAMPLE_TOLERANCE, self.capture.received + _EVENT_SAMPLE_TOLERANCE
                if not lo <= ev.sample <= hi:
                    self.capture.misplaced.append((symbol, ev.sample, self.capture.received))
            elif ev.type == _EVENT_WORD:
                self.capture.words.append((ev.sample, ev.text_position, ev.length))
            i += 1
        return 0

    def synthesize(self, text: str, voice: Voice) -> tuple[np.ndarray, _Capture]:
        """Raw synthesis: int16 samples at ``self.rate`` and the collected events."""
        if self.lib.espeak_SetVoiceByName(voice.espeak_name.encode()) != _EE_OK:
            raise LpmError(f"espeak-ng has no voice {voice.espeak_name!r} (language+variant)")
        # Set after the voice: selecting a voice resets prosody.
        for param, value in (
            (_PARAM_RATE, voice.rate),
            (_PARAM_PITCH, voice.pitch),
            (_PARAM_RANGE, voice.pitch_range),
            (_PARAM_VOLUME, voice.volume),
            (_PARAM_WORDGAP, voice.word_gap),
        ):
            self.lib.espeak_SetParameter(param, int(value), 0)
        self.capture = _Capture()
        # espeak's noise sources call libc rand(): a fixed seed makes them repeat.
        self.libc.srand(_RAND_SEED)
        data = text.encode("utf-8") + b"\0"
        err = self.lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        if err != _EE_OK:
            raise LpmError(f"espeak_Synth failed with code {err} for {text[:40]!r}")
        capture, self.capture = self.capture, _Capture()
        if capture.misplaced:
            raise LpmError(f"espeak phoneme events disagree with the audio received: {capture.misplaced[:3]}")
        pcm = np.concatenate(capture.chunks) if capture.chunks else np.zeros(0, np.int16)
        return pcm, capture


def _load_library() -> tuple[ctypes.CDLL, str]:
    env = os.environ.get("LPM_ESPEAK_LIB")
    candidates = ((env,) if env else ()) + _LIBRARY_CANDIDATES
    errors = []
    for path in candidates:
        if "/" in path and not Path(path).exists():
            errors.append(f"{path} (missing)")
            continue
        try:
            return ctypes.CDLL(path), path
        except OSError as e:
            errors.append(f"{path} ({e})")
    raise EspeakUnavailableError(
        "cannot load espeak-ng's shared library; install it (Debian/Ubuntu: apt-get install espeak-ng "
        "libespeak-ng1; macOS: brew install espeak-ng) or set LPM_ESPEAK_LIB. Tried: " + "; ".join(errors)
    )


def _send(stream, obj) -> None:
    blob = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(struct.pack("<Q", len(blob)) + blob)
    stream.flush()


def _recv(stream):
    head = stream.read(8)
    if len(head) < 8:
        return None
    (size,) = struct.unpack("<Q", head)
    return pickle.loads(stream.read(size))


def _serve() -> None:
    """The helper process: initialise espeak once, then answer each request from a fresh fork.

    espeak keeps synthesis state between calls (voice-source phase, flutter, noise), so the same text
    would come out slightly different each time; every fork starts from the same never-used state instead.
    """
    requests = sys.stdin.buffer
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything the C library prints goes to stderr, never into the reply stream
    try:
        engine = _Engine()
    except LpmError as e:
        _send(replies, ("error", str(e)))
        return
    _send(replies, ("ok", engine.rate))
    while (request := _recv(requests)) is not None:
        pid = os.fork()
        if pid == 0:
            try:
                raw, capture = engine.synthesize(*request)
                capture.chunks = []
                _send(replies, ("ok", raw.tobytes(), capture))
            except Exception as e:  # noqa: BLE001 - any failure goes back to the caller as a message
                _send(replies, ("error", f"{type(e).__name__}: {e}"))
            finally:
                os._exit(0)
        os.waitpid(pid, 0)


class _Client:
    """This process's link to its espeak helper process (one per process; restarted after a fork)."""

    def __init__(self) -> None:
        env = dict(os.environ)
        src = str(Path(__file__).resolve().parents[2])  # so the helper imports this same lpm
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH", "")) if p)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from lpm.world.speech import _serve; _serve()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        hello = _recv(self.proc.stdout)
        if hello is None or hello[0] != "ok":
            self.close()
            message = hello[1] if hello else "the espeak helper process exited during start-up"
            raise EspeakUnavailableError(message)
        self.rate = hello[1]
        g = gcd(SAMPLE_RATE, self.rate)
        self.up, self.down = SAMPLE_RATE // g, self.rate // g  # 320 / 441 for 22050 Hz
        self.pid = os.getpid()

    def synthesize(self, text: str, voice: Voice) -> tuple[np.ndarray, _Capture]:
        """Raw synthesis: int16 samples at ``self.rate`` and the collected events."""
        _send(self.proc.stdin, (text, voice))
        reply = _recv(self.proc.stdout)
        if reply is None:
            raise LpmError("the espeak helper process died")
        if reply[0] != "ok":
            raise LpmError(reply[1])
        return np.frombuffer(reply[1], dtype=np.int16), reply[2]

    def close(self) -> None:
        """Stop the helper (it also exits by itself when this process goes away)."""
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait()


_engine: _Client | None = None
_engine_lock = threading.Lock()


def _after_fork_in_child() -> None:
    # The helper's pipes belong to the parent; a forked child starts its own helper. A lock held by another
    # thread at fork time would stay held forever in the child, so it is replaced too.
    global _engine, _engine_lock
    _engine = None
    _engine_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _raw_synthesize(text: str, voice: Voice) -> tuple[np.ndarray, _Capture, int, int]:
    """espeak's own output for ``text``: (int16 samples at its rate, events, up, down resampling ratio)."""
    global _engine
    with _engine_lock:
        if _engine is None or _engine.pid != os.getpid():
            _engine = _Client()
        raw, capture = _engine.synthesize(text, voice)
        return raw, capture, _engine.up, _engine.down


def _to_16k(position: int, up: int, down: int) -> int:
    """An espeak sample index mapped to 16 kHz with the resampling ratio."""
    return int(round(position * up / down))


def synthesize(text: str, voice: Voice = Voice()) -> Utterance:
    """Speak ``text`` with ``voice``; ``?`` gives espeak's rising question intonation.

    Returns:
        An Utterance with pcm (N,) float32 at 16 kHz, trimmed to EDGE_MARGIN_S around audible speech.
    """
    from scipy.signal import resample_poly  # here: importing scipy.signal costs the helper process seconds

    raw, capture, up, down = _raw_synthesize(text, voice)
    pcm = resample_poly(raw.astype(np.float32) / 32768.0, up, down).astype(np.float32)
    np.clip(pcm, -1.0, 1.0, out=pcm)
    n_total = len(pcm)

    # Trim silence at both ends; positions shift by the same amount.
    peak = max(float(np.abs(pcm).max(initial=0.0)), 1e-9)
    loud = np.flatnonzero(np.abs(pcm) > SILENCE_REL_THRESHOLD * peak)
    margin = int(EDGE_MARGIN_S * SAMPLE_RATE)
    # first may be negative and last past the end: then zeros pad the speech out to the full margin.
    first = int(loud[0]) - margin if len(loud) else 0
    last = int(loud[-1]) + 1 + margin if len(loud) else 0
    lead_pad = max(-first, 0)
    pcm = np.pad(pcm, (lead_pad, max(last - n_total, 0)))[first + lead_pad : last + lead_pad]
    n = len(pcm)

    starts = [min(max(_to_16k(s, up, down) - first, 0), n) for s, _ in capture.phonemes]
    phonemes = []
    for k, (start, (_, symbol)) in enumerate(zip(starts, capture.phonemes)):
        end = starts[k + 1] if k + 1 < len(starts) else n
        if end > start:
            phonemes.append(Phoneme(symbol, start, end))
    words = []
    for s, pos, length in capture.words:
        word = text[pos - 1 : pos - 1 + length] if pos > 0 and length > 0 else ""
        if word.strip():  # espeak also emits zero-length word events at clause ends
            words.append((min(max(_to_16k(s, up, down) - first, 0), n), word))
    return Utterance(text=text, voice=voice, pcm=pcm, phonemes=phonemes, words=words)
