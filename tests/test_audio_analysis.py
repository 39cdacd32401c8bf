"""Audio analysis of arbitrary speech: pitch, voice activity, lip flap vs the phoneme track, questions."""

import math

import numpy as np

from lpm.world.audio_analysis import (
    frame_rms,
    lipflap_mouth,
    num_frames,
    pitch_track,
    rising_pitch,
    segments,
    voice_activity,
)
from lpm.world.speech import PARTNER_VOICES, SAMPLE_RATE, SELF_VOICES, Voice, synthesize
from lpm.world.visemes import mouth_track

FPS = 24
HOP = SAMPLE_RATE / FPS
PAD_S = 1.0
MIN_LIPFLAP_R = 0.65  # measured 0.8+ on espeak speech
MIN_QUESTION_ACC = 0.85  # measured ~0.95 over the English voices
QUESTIONS = (
    "Is this a question?",
    "Are you coming home tonight?",
    "Do you like green apples?",
    "Can we go to the park later?",
    "Have you seen my keys?",
    "Was the movie any good?",
)
STATEMENTS = (
    "This is a statement.",
    "I am going home tonight.",
    "She likes green apples.",
    "We went to the park yesterday.",
    "My keys are on the table.",
    "The movie was very good.",
)


def _padded(text: str, voice: Voice | None = None):
    u = synthesize(text, voice or Voice())
    pad = np.zeros(int(PAD_S * SAMPLE_RATE), np.float32)
    return u, np.concatenate([pad, u.pcm, pad]), len(pad)


def test_frame_counts():
    for n in (0, 1, 666, 667, 16000, 16001):
        x = np.zeros(n, np.float32)
        f = math.ceil(n / HOP)
        assert num_frames(n) == f
        assert frame_rms(x).shape == (f,) and pitch_track(x).shape == (f,)
        assert voice_activity(x).shape == (f,) and lipflap_mouth(x).shape == (f, 3)


def test_pitch_of_tones():
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    for f0 in (110.0, 200.0, 320.0):
        p = pitch_track(0.5 * np.sin(2 * np.pi * f0 * t).astype(np.float32))
        assert abs(float(np.median(p[2:-2])) - f0) < 0.01 * f0
    assert not pitch_track(np.zeros(SAMPLE_RATE, np.float32)).any()
    rng = np.random.default_rng(0)
    assert (pitch_track(0.1 * rng.standard_normal(SAMPLE_RATE)) > 0).mean() < 0.1  # noise is unvoiced


def test_vad_finds_speech_between_silences():
    u, x, pad = _padded("Hello world, the quick brown fox jumps over the lazy dog.")
    for gain in (1.0, 0.01):  # thresholds are relative: a level change moves nothing
        active = voice_activity(x * gain)
        runs = segments(active)
        assert abs(runs[0][0] - pad / HOP) <= 2, runs
        assert abs(runs[-1][1] - (pad + len(u.pcm)) / HOP) <= 2, runs
        assert not active[: int(pad / HOP) - 2].any() and not active[-int(pad / HOP) + 2 :].any()


def test_vad_silent_inputs():
    rng = np.random.default_rng(0)
    assert not voice_activity(np.zeros(3 * SAMPLE_RATE, np.float32)).any()
    assert not voice_activity(1e-3 * rng.standard_normal(3 * SAMPLE_RATE)).any()
    assert not lipflap_mouth(np.zeros(SAMPLE_RATE, np.float32)).any()


def test_segments():
    a = np.array([0, 1, 1, 0, 0, 1, 0, 1, 1, 1], bool)
    assert segments(a) == [(1, 3), (5, 6), (7, 10)]
    assert segments(np.zeros(4, bool)) == []


def test_lipflap_follows_phoneme_track():
    rs = []
    for voice in (SELF_VOICES[0], SELF_VOICES[1], PARTNER_VOICES[0]):
        u, x, pad = _padded("Hello there, my friend. Bob bought a big map. How are you today?", voice)
        truth = mouth_track(u.phonemes, num_frames(len(x)), offset=pad)
        flap = lipflap_mouth(x)
        assert flap.shape == truth.shape and flap.min() >= 0 and flap.max() <= 1
        assert not flap[: int(pad / HOP) - 2].any()  # closed where nobody speaks
        rs.append(float(np.corrcoef(flap[:, 0], truth[:, 0])[0, 1]))
    print(f"lip-flap jaw vs phoneme track Pearson r: {np.round(rs, 3).tolist()}")
    assert min(rs) > MIN_LIPFLAP_R, rs


def test_rising_pitch_detects_questions():
    correct, total = 0, 0
    for voice in (SELF_VOICES[0], SELF_VOICES[1], PARTNER_VOICES[1]):
        for texts, is_question in ((QUESTIONS, True), (STATEMENTS, False)):
            for text in texts:
                _, x, _ = _padded(text, voice)
                pitch = pitch_track(x)
                start, end = segments(voice_activity(x))[0][0], segments(voice_activity(x))[-1][1]
                correct += rising_pitch(pitch, start, end) == is_question
                total += 1
    print(f"question detection accuracy: {correct}/{total}")
    assert correct / total >= MIN_QUESTION_ACC
    assert not rising_pitch(np.zeros(50, np.float32), 0, 50)
