"""The behaviour controller: speak / listen / idle as per-frame rig motion. Also the *traditional pipeline*.

The controller is driven by ``Cues`` (what is audible, frame by frame). Cues come either from the dialogue
script (exact phonemes and segment boundaries: ground truth for training data) or from two arbitrary audio
tracks (voice activity, a spectral lip-flap estimate and pitch analysis: the classic rig pipeline the model is
benchmarked against). Every listening reaction follows a cue audible in the partner track:

- a nod after a partner phrase end (delay drawn from ``NOD_DELAY_S``),
- a brow raise or head tilt after a question (rising pitch at the phrase end),
- a smile after a laugh.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.ndimage import gaussian_filter1d

from lpm.world import audio_analysis as aa
from lpm.world.dialogue import Conversation
from lpm.world.motion import MOTION_INDEX as M
from lpm.world.motion import NUM_MOTION, clip_to_range, emotion_vector
from lpm.world.speech import SAMPLE_RATE
from lpm.world.visemes import mouth_track

FPS = 24

# Reaction timing (seconds) and shapes.
NOD_PROB = 0.85
NOD_DELAY_S = (0.2, 0.6)
NOD_LEN_S = 0.45
NOD_DEPTH_DEG = (6.0, 11.0)
QUESTION_DELAY_S = (0.2, 0.5)
BROW_LEN_S = 0.9
TILT_DEG = 9.0
SMILE_DELAY_S = (0.15, 0.4)
SMILE_HOLD_S = 0.8
LISTEN_HANGOVER_S = 0.8  # frames this long after the partner stops still count as listening
BLINK_RATE_HZ = {"speak": 0.35, "listen": 0.25, "idle": 0.22}
BLINK_SHAPE = np.array([0.5, 1.0, 1.0, 0.6, 0.25], np.float32)  # ~200 ms at 24 fps
BREATH_PERIOD_S = (3.5, 5.0)
# Laughs in arbitrary audio: short voiced bursts at a syllable rate, see ``_is_laugh``.
LAUGH_BURST_HZ = (3.0, 8.0)


@dataclass
class Cues:
    """What the controller reacts to, per video frame (F frames)."""

    num_frames: int
    self_speech: np.ndarray  # (F,) bool: the character talks (not counting backchannels)
    self_mouth: np.ndarray  # (F, 3) jaw_open, mouth_round, mouth_wide
    self_rms: np.ndarray  # (F,) loudness of the character's voice
    self_pitch: np.ndarray  # (F,) Hz, 0 unvoiced
    partner_active: np.ndarray  # (F,) bool
    phrase_ends: list[int] = field(default_factory=list)  # frames where a partner phrase ends
    questions: list[int] = field(default_factory=list)  # frames where a partner question ends
    laughs: list[int] = field(default_factory=list)  # frames where a partner laugh starts
    interruptions: list[tuple[int, int]] = field(default_factory=list)  # (partner onset, self stop)
    backchannels: list[int] = field(default_factory=list)  # frames where the character says "mm-hm"


@dataclass
class Performance:
    """The controller's output for one clip.

    Attributes:
        motion: (F, NUM_MOTION) float32 in the layout of lpm.world.motion.
        states: per frame, speak | listen | idle.
        events: dicts with ``type``, ``frame`` (onset) and, for reactions, ``cue`` and ``cue_frame``.
    """

    motion: np.ndarray
    states: list[str]
    events: list[dict]


def frames_for(num_samples: int, fps: int = FPS) -> int:
    """Number of video frames covering ``num_samples`` of 16 kHz audio."""
    return int(round(num_samples * fps / SAMPLE_RATE))


def _frame(sample: int, fps: int = FPS) -> int:
    return int(round(sample * fps / SAMPLE_RATE))


def _mask(num_frames: int, spans: list[tuple[int, int]], fps: int = FPS) -> np.ndarray:
    out = np.zeros(num_frames, bool)
    for s, e in spans:
        out[max(0, _frame(s, fps)): max(0, min(num_frames, _frame(e, fps)))] = True
    return out


def _fit(x: np.ndarray, n: int) -> np.ndarray:
    """Pad (edge) or cut an analysis track to exactly n frames."""
    if x.shape[0] >= n:
        return x[:n]
    pad = [(0, n - x.shape[0])] + [(0, 0)] * (x.ndim - 1)
    return np.pad(x, pad, mode="edge" if x.shape[0] else "constant")


def cues_from_conversation(conv: Conversation, fps: int = FPS) -> Cues:
    """Exact cues from the dialogue script (ground truth)."""
    n = frames_for(conv.num_samples, fps)
    self_segs = [s for s in conv.segments if s.speaker == "self"]
    partner = [s for s in conv.segments if s.speaker == "partner"]
    phonemes = [p for s in self_segs for p in s.phonemes]
    cues = Cues(
        num_frames=n,
        self_speech=_mask(n, [(s.start, s.end) for s in self_segs if s.kind == "speech"], fps),
        self_mouth=mouth_track(phonemes, n, fps=fps, sample_rate=SAMPLE_RATE),
        self_rms=_fit(aa.frame_rms(conv.self_pcm, fps, SAMPLE_RATE), n),
        self_pitch=_fit(aa.pitch_track(conv.self_pcm, fps, SAMPLE_RATE), n),
        partner_active=_mask(n, [(s.start, s.end) for s in partner], fps),
    )
    for s in partner:
        if s.kind == "laugh":
            cues.laughs.append(_frame(s.start, fps))
        elif s.question:
            cues.questions.append(_frame(s.end, fps))
        else:
            cues.phrase_ends.append(_frame(s.end, fps))
    for s in self_segs:
        if s.kind == "backchannel":
            cues.backchannels.append(_frame(s.start, fps))
        if s.interrupted:
            onset = max((p.start for p in partner if s.start < p.start < s.end), default=None)
            if onset is not None:
                cues.interruptions.append((_frame(onset, fps), _frame(s.end, fps)))
    return cues


def _is_laugh(rms: np.ndarray, start: int, end: int, fps: int) -> bool:
    """A short run of loudness bursts at a syllable rate (3-8 Hz) with deep modulation reads as laughter."""
    seg = rms[start:end]
    if seg.size < 4 or (end - start) / fps > 2.0:
        return False
    env = gaussian_filter1d(seg, 0.7)
    peaks = [i for i in range(1, env.size - 1) if env[i] > env[i - 1] and env[i] >= env[i + 1]
             and env[i] > 0.5 * env.max()]
    if len(peaks) < 2:
        return False
    rate = (len(peaks) - 1) / max((peaks[-1] - peaks[0]) / fps, 1e-6)
    depth = env.min() / (env.max() + 1e-9)
    return LAUGH_BURST_HZ[0] <= rate <= LAUGH_BURST_HZ[1] and depth < 0.35


def cues_from_audio(self_pcm: np.ndarray, partner_pcm: np.ndarray, fps: int = FPS) -> Cues:
    """Estimated cues from two arbitrary mono tracks at 16 kHz (the traditional lip-flap pipeline)."""
    n = frames_for(max(self_pcm.shape[0], partner_pcm.shape[0]), fps)
    self_vad = _fit(aa.voice_activity(self_pcm, fps, SAMPLE_RATE), n)
    p_vad = _fit(aa.voice_activity(partner_pcm, fps, SAMPLE_RATE), n)
    p_rms = _fit(aa.frame_rms(partner_pcm, fps, SAMPLE_RATE), n)
    p_pitch = _fit(aa.pitch_track(partner_pcm, fps, SAMPLE_RATE), n)
    mouth = _fit(aa.lipflap_mouth(self_pcm, fps, SAMPLE_RATE), n)
    cues = Cues(n, self_vad, mouth * self_vad[:, None], _fit(aa.frame_rms(self_pcm, fps, SAMPLE_RATE), n),
                _fit(aa.pitch_track(self_pcm, fps, SAMPLE_RATE), n), p_vad)
    self_segs = aa.segments(self_vad)
    for s, e in aa.segments(p_vad):
        if _is_laugh(p_rms, s, e, fps):
            cues.laughs.append(s)
        elif aa.rising_pitch(p_pitch, s, e):
            cues.questions.append(e)
        else:
            cues.phrase_ends.append(e)
        for ss, se in self_segs:  # the partner starts while the character talks, and it stops soon after
            if ss < s < se and se - s <= int(0.6 * fps):
                cues.interruptions.append((s, se))
    return cues


def _smooth_walk(rng: np.random.Generator, n: int, sigma_frames: float, amp: float) -> np.ndarray:
    """Band-limited noise: white noise smoothed and scaled to a standard deviation of ``amp``."""
    x = gaussian_filter1d(rng.standard_normal(n + 64), sigma_frames)[32: 32 + n]
    return (x / (x.std() + 1e-8) * amp).astype(np.float32)


def _window(length: int) -> np.ndarray:
    return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(length) / max(length - 1, 1))).astype(np.float32)


def _add(track: np.ndarray, start: int, shape: np.ndarray) -> None:
    s, e = max(0, start), min(track.shape[0], start + shape.shape[0])
    if e > s:
        track[s:e] += shape[s - start: e - start]


def _plateau(length: int, ramp: int) -> np.ndarray:
    out = np.ones(length, np.float32)
    r = min(ramp, length // 2)
    if r:
        out[:r] = np.linspace(0, 1, r, endpoint=False)
        out[-r:] = np.linspace(1, 0, r)
    return out


def _states(cues: Cues, fps: int) -> list[str]:
    listen = cues.partner_active.copy()
    hang = int(LISTEN_HANGOVER_S * fps)
    for _, e in aa.segments(cues.partner_active):
        listen[e: e + hang] = True
    out = np.where(cues.self_speech, "speak", np.where(listen, "listen", "idle"))
    return [str(s) for s in out]


def perform(cues: Cues, rng: np.random.Generator, emotion: str = "neutral", intensity: float = 0.0,
            body_yaw: float = 0.0, fps: int = FPS) -> Performance:
    """Turn cues into rig motion, per-frame states and reaction events."""
    n = cues.num_frames
    m = np.zeros((n, NUM_MOTION), np.float32)
    states = _states(cues, fps)
    st = np.array(states)
    events: list[dict] = []
    t = np.arange(n) / fps
    speaking = st == "speak"

    # Mouth from speech (phoneme-exact or lip-flap); emotion as a constant baseline.
    m[:, [M["jaw_open"], M["mouth_round"], M["mouth_wide"]]] = cues.self_mouth
    m[:, [M["emo_happy"], M["emo_sad"], M["emo_surprised"], M["emo_angry"]]] = emotion_vector(emotion, intensity)
    m[:, M["smile"]] += {"happy": 0.35, "sad": -0.3, "angry": -0.15}.get(emotion, 0.0) * intensity
    m[:, M["brow_raise"]] += {"surprised": 0.4, "angry": -0.45, "sad": 0.1}.get(emotion, 0.0) * intensity

    # Idle life everywhere: breathing, slow head drift, body sway.
    period = rng.uniform(*BREATH_PERIOD_S)
    m[:, M["breath"]] = np.sin(2 * np.pi * t / period + rng.uniform(0, 2 * np.pi))
    m[:, M["head_yaw"]] += _smooth_walk(rng, n, 1.2 * fps, 2.5)
    m[:, M["head_pitch"]] += _smooth_walk(rng, n, 1.2 * fps, 1.5)
    m[:, M["head_roll"]] += _smooth_walk(rng, n, 1.5 * fps, 1.2)
    m[:, M["body_yaw"]] = body_yaw + _smooth_walk(rng, n, 2.0 * fps, 1.5)

    # Speaking: prosody drives the head (beats on loudness peaks) and brows (pitch emphasis).
    rms = cues.self_rms / (np.percentile(cues.self_rms[speaking], 95) + 1e-8) if speaking.any() else cues.self_rms
    beat = gaussian_filter1d(rms, 1.0) - gaussian_filter1d(rms, 6.0)
    m[:, M["head_pitch"]] -= np.where(speaking, 5.0 * beat, 0.0)
    m[:, M["head_yaw"]] += np.where(speaking, _smooth_walk(rng, n, 0.6 * fps, 4.0), 0.0)
    voiced = cues.self_pitch > 0
    if voiced.sum() > 8:
        z = (cues.self_pitch - cues.self_pitch[voiced].mean()) / (cues.self_pitch[voiced].std() + 1e-6)
        emph = gaussian_filter1d(np.where(voiced & speaking, np.clip(z - 0.8, 0, 2), 0.0), 2.0)
        m[:, M["brow_raise"]] += 0.45 * emph

    # Gaze: at the partner (the camera) while listening, glances away at turn starts, drifts when idle.
    gaze = np.zeros((n, 2), np.float32)
    f = 0
    while f < n:
        hold = int(rng.uniform(0.4, 1.4) * fps) if st[f] != "idle" else int(rng.uniform(0.8, 2.5) * fps)
        if st[f] == "idle":
            target = rng.uniform([-0.6, -0.3], [0.6, 0.4])
        elif st[f] == "speak" and f > 0 and st[f - 1] != "speak":
            target = np.array([rng.choice([-0.5, 0.5]), rng.uniform(0.1, 0.35)])
        else:
            target = rng.normal(0, 0.06, size=2)
        gaze[f: f + hold] = target
        f += max(hold, 1)
    gaze = gaussian_filter1d(gaze, 0.8, axis=0)  # saccades take ~2 frames
    m[:, M["gaze_x"]], m[:, M["gaze_y"]] = gaze[:, 0], gaze[:, 1]

    # Blinks: a Poisson process whose rate depends on the state.
    blink = np.zeros(n, np.float32)
    f = int(rng.uniform(0, 1.5) * fps)
    while f < n:
        _add(blink, f, BLINK_SHAPE)
        events.append({"type": "blink", "frame": int(f), "end": int(min(n, f + BLINK_SHAPE.size))})
        rate = BLINK_RATE_HZ[st[f]]
        f += max(BLINK_SHAPE.size + 2, int(rng.exponential(1.0 / rate) * fps))
    m[:, M["blink_l"]] = blink
    m[:, M["blink_r"]] = blink

    # Listening reactions, each after an audible cue in the partner track.
    def free(frame: int) -> bool:
        return 0 <= frame < n and not speaking[frame]

    for cue in cues.phrase_ends:
        if rng.random() > NOD_PROB:
            continue
        onset = cue + int(rng.uniform(*NOD_DELAY_S) * fps)
        if not free(onset):
            continue
        length = int(NOD_LEN_S * fps)
        depth = rng.uniform(*NOD_DEPTH_DEG)
        shape = -depth * _window(length)
        if rng.random() < 0.3:  # a double nod
            shape = np.concatenate([shape, -0.7 * depth * _window(length)])
        _add(m[:, M["head_pitch"]], onset, shape)
        events.append({"type": "nod", "frame": int(onset), "end": int(min(n, onset + shape.size)),
                       "cue": "phrase_end", "cue_frame": int(cue)})
    for cue in cues.questions:
        onset = cue + int(rng.uniform(*QUESTION_DELAY_S) * fps)
        if not free(onset):
            continue
        length = int(BROW_LEN_S * fps)
        if rng.random() < 0.6:
            _add(m[:, M["brow_raise"]], onset, 0.75 * _plateau(length, 4))
            kind = "brow_raise"
        else:
            _add(m[:, M["head_roll"]], onset, rng.choice([-1, 1]) * TILT_DEG * _plateau(length, 5))
            kind = "head_tilt"
        events.append({"type": kind, "frame": int(onset), "end": int(min(n, onset + length)),
                       "cue": "question", "cue_frame": int(cue)})
    for cue in cues.laughs:
        onset = cue + int(rng.uniform(*SMILE_DELAY_S) * fps)
        if not 0 <= onset < n:
            continue
        length = int((SMILE_HOLD_S + 1.0) * fps)
        _add(m[:, M["smile"]], onset, 0.8 * _plateau(length, 5))
        events.append({"type": "smile", "frame": int(onset), "end": int(min(n, onset + length)),
                       "cue": "laugh", "cue_frame": int(cue)})
    for onset, stop in cues.interruptions:
        events.append({"type": "interruption", "frame": int(onset), "stop_frame": int(stop)})
    for frame in cues.backchannels:
        events.append({"type": "backchannel", "frame": int(frame)})

    events.sort(key=lambda e: (e["frame"], e["type"]))
    return Performance(clip_to_range(m), states, events)


def perform_conversation(conv: Conversation, rng: np.random.Generator, emotion: str = "neutral",
                         intensity: float = 0.0, body_yaw: float = 0.0, fps: int = FPS) -> Performance:
    """Ground-truth performance of a scripted conversation."""
    return perform(cues_from_conversation(conv, fps), rng, emotion, intensity, body_yaw, fps)


def perform_audio(self_pcm: np.ndarray, partner_pcm: np.ndarray, seed: int = 0, emotion: str = "neutral",
                  intensity: float = 0.0, fps: int = FPS) -> Performance:
    """The traditional pipeline: perform two arbitrary 16 kHz tracks (no phonemes, no script).

    Args:
        self_pcm, partner_pcm: (N,) float mono at 16 kHz (the shorter one is zero-padded).
    """
    n = max(self_pcm.shape[0], partner_pcm.shape[0])
    self_pcm = np.pad(np.asarray(self_pcm, np.float32), (0, n - self_pcm.shape[0]))
    partner_pcm = np.pad(np.asarray(partner_pcm, np.float32), (0, n - partner_pcm.shape[0]))
    rng = np.random.default_rng(seed)
    return perform(cues_from_audio(self_pcm, partner_pcm, fps), rng, emotion, intensity, 0.0, fps)
