"""espeak-ng synthesis (phoneme timing, voices, determinism, processes) and phoneme -> viseme mouth tracks."""

import math
import multiprocessing as mp

import numpy as np
import pytest

from lpm.world import speech
from lpm.world.audio_analysis import pitch_track
from lpm.world.speech import (
    PARTNER_VOICES,
    SAMPLE_RATE,
    SELF_VOICES,
    EspeakUnavailableError,
    Voice,
    is_pause,
    is_vowel,
    synthesize,
)
from lpm.world.visemes import VISEMES, mouth_track, phoneme_to_viseme

FPS = 24
HOP = SAMPLE_RATE / FPS
SENTENCE = "Hello there, my friend. Bob bought a big map. How are you today?"
TEXTS = {
    "en": SENTENCE,
    "fr": "Bonjour tout le monde. Papa mange une pomme. Comment allez-vous?",
    "de": "Guten Tag. Bitte eine Maus mit Butter. Wie geht es Ihnen?",
    "es": "Hola amigo. Pablo mira el mapa bonito. ¿Cómo estás?",
}
OPEN_JAW = 0.3
CLOSED_JAW = 0.1
LONG_VOWEL_FRAMES = 2


def _text(voice: Voice) -> str:
    return TEXTS[voice.language[:2]]


def test_phoneme_events_monotonic_and_within_audio():
    u = synthesize(SENTENCE)
    assert u.pcm.dtype == np.float32 and u.pcm.ndim == 1 and np.abs(u.pcm).max() <= 1.0
    starts = [p.start for p in u.phonemes]
    assert starts == sorted(starts)
    for a, b in zip(u.phonemes[:-1], u.phonemes[1:]):
        assert a.end == b.start  # a phoneme ends where the next begins
    assert all(0 <= p.start < p.end <= len(u.pcm) for p in u.phonemes)
    vowels = [p for p in u.phonemes if is_vowel(p.symbol)]
    assert len(vowels) >= 12
    assert [w for _, w in u.words][:3] == ["Hello", "there", "my"]
    assert [s for s, _ in u.words] == sorted(s for s, _ in u.words)


def test_event_sample_agrees_with_audio_position():
    raw, capture, up, down = speech._raw_synthesize(SENTENCE, Voice())
    per_ms = SAMPLE_RATE * down / up / 1000  # espeak's samples per millisecond
    for (sample, _), ms in zip(capture.phonemes, capture.phoneme_ms):
        assert 0 <= sample <= len(raw)
        assert abs(sample / per_ms - ms) <= 1.0  # the sample index and the millisecond clock agree
    assert not capture.misplaced  # and every event arrived with the buffer holding its sample


def test_vowels_louder_than_pauses():
    u = synthesize(SENTENCE)

    def rms(spans):
        x = np.concatenate([u.pcm[p.start : p.end] for p in spans])
        return float(np.sqrt(np.mean(x**2)))

    vowels = [p for p in u.phonemes if is_vowel(p.symbol)]
    pauses = [p for p in u.phonemes if is_pause(p.symbol) and p.end - p.start > HOP]
    assert pauses, "sentence breaks give long pauses"
    assert rms(vowels) > 10 * rms(pauses)  # > 20 dB


def test_deterministic_across_calls_and_voices():
    # espeak carries state between calls; synthesis from a pristine fork must repeat bit for bit.
    a = synthesize(SENTENCE, SELF_VOICES[0])
    synthesize("Something else entirely.", PARTNER_VOICES[1])
    b = synthesize(SENTENCE, SELF_VOICES[0])
    np.testing.assert_array_equal(a.pcm, b.pcm)
    assert a.phonemes == b.phonemes


@pytest.mark.parametrize("voice", SELF_VOICES + PARTNER_VOICES, ids=lambda v: v.espeak_name)
def test_every_voice_synthesizes(voice):
    u = synthesize(_text(voice), voice)
    assert len(u.pcm) > SAMPLE_RATE and sum(is_vowel(p.symbol) for p in u.phonemes) >= 8


def test_voice_sets_are_varied_and_distinct():
    key = lambda v: (v.language, v.variant, v.pitch)  # noqa: E731
    assert not {key(v) for v in SELF_VOICES} & {key(v) for v in PARTNER_VOICES}
    for voices in (SELF_VOICES, PARTNER_VOICES):
        assert len({v.language for v in voices}) >= 4
        assert len({v.rate for v in voices}) >= 3 and len({v.pitch for v in voices}) >= 3


def test_pitch_parameter_changes_f0():
    f0 = []
    for pitch in (20, 50, 80):
        p = pitch_track(synthesize(SENTENCE, Voice(pitch=pitch)).pcm)
        f0.append(float(np.median(p[p > 0])))
    assert f0[0] * 1.15 < f0[1] and f0[1] * 1.15 < f0[2], f0


def test_is_vowel():
    for s in ("a", "aI", "@", "3:", "0", "i@3", "O~", "'E", "W", "y:"):
        assert is_vowel(s), s
    for s in ("p", "tS", "n^", "_:", "_", "||", "r-", "j", "w", "**"):
        assert not is_vowel(s), s


def test_missing_library_error(monkeypatch):
    monkeypatch.setenv("LPM_ESPEAK_LIB", "/nonexistent/libespeak-ng.so.1")
    monkeypatch.setattr(speech, "_LIBRARY_CANDIDATES", ())
    with pytest.raises(EspeakUnavailableError, match="espeak-ng.*/nonexistent/libespeak-ng.so.1"):
        speech._load_library()


def _worker_pcm(text: str) -> np.ndarray:
    return synthesize(text).pcm


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_works_in_worker_processes(method):
    if method not in mp.get_all_start_methods():
        pytest.skip(f"no {method}")
    expected = synthesize("One two three.").pcm  # the parent has an engine before forking
    with mp.get_context(method).Pool(2) as pool:
        out = pool.map(_worker_pcm, ["One two three."] * 2)
    for pcm in out:
        np.testing.assert_array_equal(pcm, expected)


# --- visemes -------------------------------------------------------------------------------------------


def test_viseme_table():
    for cls, targets in VISEMES.items():
        assert len(targets) == 3 and all(0.0 <= t <= 1.0 for t in targets), cls
    assert VISEMES["PP"][0] == 0.0 and VISEMES["sil"] == (0.0, 0.0, 0.0)
    assert phoneme_to_viseme("p") == phoneme_to_viseme("b") == phoneme_to_viseme("m") == "PP"
    assert phoneme_to_viseme("_:") == "sil"
    assert phoneme_to_viseme("aI") == "aa" and phoneme_to_viseme("u:") == "ou"


@pytest.mark.parametrize(
    "voice", [SELF_VOICES[0], SELF_VOICES[1], PARTNER_VOICES[3], SELF_VOICES[5], SELF_VOICES[6]]
)
def test_every_vowel_opens_within_one_frame(voice):
    u = synthesize(_text(voice), voice)
    n = math.ceil(len(u.pcm) / HOP)
    jaw = mouth_track(u.phonemes, n)[:, 0]
    checked = 0
    for p in u.phonemes:
        assert VISEMES[phoneme_to_viseme(p.symbol)][0] >= 0.45 or not is_vowel(p.symbol), p.symbol
        if is_vowel(p.symbol) and p.end - p.start > LONG_VOWEL_FRAMES * HOP:
            first_frame = math.ceil(p.start / HOP)  # the first frame instant at or after the vowel starts
            assert jaw[first_frame] > OPEN_JAW, (p, jaw[first_frame - 2 : first_frame + 2])
            checked += 1
    assert checked >= 5


@pytest.mark.parametrize("voice", [SELF_VOICES[0], PARTNER_VOICES[3], SELF_VOICES[6]])
def test_bilabials_close_the_mouth(voice):
    u = synthesize(_text(voice), voice)
    lead = FPS  # placed one second into a track, as in a dialogue: the lips are closed before speech
    jaw = mouth_track(u.phonemes, lead + math.ceil(len(u.pcm) / HOP), offset=round(lead * HOP))[:, 0]
    bilabials = [p for p in u.phonemes if phoneme_to_viseme(p.symbol) == "PP"]
    assert len(bilabials) >= 3
    for p in bilabials:
        lo, hi = math.floor(p.start / HOP) - 1, math.ceil(p.end / HOP) + 1
        assert jaw[lo + lead : hi + lead].min() < CLOSED_JAW, (p, jaw[lo:hi])


def test_silence_is_closed_and_offset_shifts():
    u = synthesize(SENTENCE)
    lead = 2 * FPS  # frames of silence before the utterance
    offset = round(lead * HOP)  # an exact whole number of samples (2 s)
    n = lead + math.ceil(len(u.pcm) / HOP) + 2 * FPS
    m = mouth_track(u.phonemes, n, offset=offset)
    assert m.shape == (n, 3) and m.dtype == np.float32
    assert np.all(m[: lead - 2] == 0) and np.all(m[-FPS:] == 0)
    # Shifting by whole frames shifts the track (up to rounding on the time grid).
    np.testing.assert_allclose(m[lead : lead + 30], mouth_track(u.phonemes, 30), atol=0.02)
    for p in u.phonemes:  # long pauses inside the utterance close the mouth too
        if is_pause(p.symbol) and p.end - p.start > 4 * HOP:
            mid = lead + round((p.start + p.end) / 2 / HOP)
            assert m[mid, 0] < CLOSED_JAW


def test_track_is_smooth():
    u = synthesize(SENTENCE)
    jaw = mouth_track(u.phonemes, math.ceil(len(u.pcm) / HOP))[:, 0]
    # Jitter would show as many one-frame reversals; coarticulated motion reverses about once per phoneme.
    d = np.diff(jaw)
    reversals = int(np.sum(np.sign(d[1:]) * np.sign(d[:-1]) < 0))
    assert reversals <= len(u.phonemes)
