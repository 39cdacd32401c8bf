"""``RigEngine``: the world's traditional pipeline (lip flap, voice activity, rule-driven reactions) streamed.

``StreamingRig`` is a causal version of ``lpm.world.controller``: every frame is decided once, from audio up to
the chunk's end plus ``lookahead_frames`` (the analysis windows of ``lpm.world.audio_analysis`` are centred on
each frame's instant and reach half to one frame ahead). Nothing later can change a frame already produced.
The rules are the controller's: the mouth follows a lip-flap estimate of own speech; a partner phrase end
(``PHRASE_END_FRAMES`` of silence after voice) is followed by a nod, a rising-pitch phrase by a brow raise or a
head tilt, a laugh by a smile; blinks, breathing, head drift and gaze run everywhere. Only world characters
(``STYLE:SEED``) can be rendered.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from lpm.runtime.engines import FPS, SAMPLE_RATE, Character, ChunkInput, Engine, EngineError, Stage
from lpm.world import audio_analysis as aa
from lpm.world import controller as ctl
from lpm.world.identity import sample_identity
from lpm.world.motion import EMOTIONS, MOTION_INDEX, NUM_MOTION, clip_to_range, emotion_vector
from lpm.world.render import Renderer

M = MOTION_INDEX
HISTORY_S = 4.0  # audio kept behind the newest sample: the VAD's noise/level windows span 3 s
ALIGN_FRAMES = 3  # history starts at a multiple of 3 frames = 2000 samples, an exact sample boundary at 24 fps
PHRASE_END_FRAMES = round(aa.HANGOVER_S * FPS)  # silence that closes a partner phrase (a causal hangover)
LISTEN_HANGOVER_FRAMES = round(ctl.LISTEN_HANGOVER_S * FPS)
DRIFT_TAU_S = 1.2  # head drift: time constant of the smoothed random walk (the controller's smoothing)
DRIFT_DEG = {"head_yaw": 2.5, "head_pitch": 1.5, "head_roll": 1.2, "body_yaw": 1.5}  # drift std, degrees
SPEAK_YAW_DEG = 4.0  # extra head yaw wander while speaking
SPEAK_YAW_TAU_S = 0.6
BEAT_FAST, BEAT_SLOW = 0.5, 1.0 / 6.0  # EMA rates of loudness whose difference is the speaking head beat
BEAT_PITCH_DEG = 5.0  # head pitch per unit beat
LOUDNESS_DECAY_S = 3.0  # running loudness reference forgets over this time
GAZE_SACCADE = 0.6  # fraction of the way to the gaze target covered per frame (a saccade in ~2 frames)
TEXT_EMOTION_INTENSITY = 0.7  # emotion intensity when the text names one
EVENT_LOG = 512  # reaction events kept for inspection


@dataclass
class Reaction:
    """A motion shape added to some channels from frame ``onset``; dropped if the character speaks then."""

    onset: int
    channels: tuple[int, ...]
    shape: np.ndarray  # (L,) added to each channel
    kind: str
    yields_to_speech: bool = True


def _emotion_in(text: str) -> str:
    words = set(text.lower().replace(",", " ").replace(".", " ").split())
    return next((e for e in EMOTIONS if e != "neutral" and e in words), "neutral")


class StreamingRig:
    """Causal behaviour controller: ``push`` audio, then ``next_frames(n)`` rig rows, each decided once.

    Args:
        seed: draws the character's idle life (blinks, drift, reaction timing).
        lookahead_frames: audio frames past the last produced frame that ``push`` will have supplied.
    """

    def __init__(self, seed: int = 0, lookahead_frames: int = 1, fps: int = FPS, sample_rate: int = SAMPLE_RATE):
        if sample_rate * ALIGN_FRAMES % fps:
            raise EngineError("the rig needs sample_rate * 3 / fps to be an integer")
        self.fps, self.sr, self.lookahead = fps, sample_rate, lookahead_frames
        self.rng = np.random.default_rng(seed)
        self.self_hist = np.zeros(0, np.float32)
        self.partner_hist = np.zeros(0, np.float32)
        self.hist_frame0 = 0  # absolute frame whose instant is history sample 0
        self.next_frame = 0
        self.emotion = "neutral"
        self.pending: list[Reaction] = []
        self.events: deque[dict] = deque(maxlen=EVENT_LOG)
        self.partner_run_start: int | None = None
        self.partner_silent = 0
        self.last_partner_active = -(10**9)
        self.prev_state = "idle"
        self.next_blink = int(self.rng.uniform(0, 1.5) * fps)
        self.breath_period = self.rng.uniform(*ctl.BREATH_PERIOD_S)
        self.breath_phase = self.rng.uniform(0, 2 * np.pi)
        self.drift = {k: np.zeros(2) for k in (*DRIFT_DEG, "speak_yaw")}  # (walk, smoothed) per channel
        self.loud_ref = 1e-4
        self.beat = np.zeros(2)  # fast, slow EMAs of normalised loudness
        self.gaze = np.zeros(2)
        self.gaze_target = np.zeros(2)
        self.gaze_until = 0

    # ---- input ----
    def set_text(self, text: str) -> None:
        """The text control: an emotion word in it (happy, sad, surprised, angry) sets the expression."""
        self.emotion = _emotion_in(text or "")

    def push(self, self_pcm: np.ndarray, partner_pcm: np.ndarray) -> None:
        """Append the new samples of both streams (equal lengths) to the bounded history."""
        self.self_hist = np.concatenate([self.self_hist, np.asarray(self_pcm, np.float32)])
        self.partner_hist = np.concatenate([self.partner_hist, np.asarray(partner_pcm, np.float32)])

    def _trim(self) -> None:
        keep_from = self.next_frame - int(HISTORY_S * self.fps)
        keep_from -= keep_from % ALIGN_FRAMES
        if keep_from > self.hist_frame0:
            cut = (keep_from - self.hist_frame0) * self.sr // self.fps  # exact: a multiple of 3 frames
            self.self_hist, self.partner_hist = self.self_hist[cut:], self.partner_hist[cut:]
            self.hist_frame0 = keep_from

    # ---- per-frame rules ----
    def _walk(self, name: str, tau_s: float, std: float) -> float:
        """A smoothed Ornstein-Uhlenbeck walk with stationary std ``std`` (band-limited drift)."""
        a = math.exp(-1.0 / (tau_s * self.fps))
        state = self.drift[name]
        state[0] = a * state[0] + math.sqrt(1 - a * a) * std * self.rng.standard_normal()  # OU, std ``std``
        state[1] = a * state[1] + (1 - a) * state[0]  # one-pole smoothing
        # The smoothing shrinks the std by sqrt(1 + a^2) / (1 + a) (the sum over the two AR(1) kernels).
        return float(state[1] * (1 + a) / math.sqrt(1 + a * a))

    def _phrase_end(self, start: int, end: int, p_rms: np.ndarray, p_pitch_fn) -> None:
        """Schedule the listening reaction to a partner phrase ``[start, end)`` (absolute frames)."""
        s, e = max(start, self.hist_frame0) - self.hist_frame0, end - self.hist_frame0
        now = self.next_frame + 1
        if ctl._is_laugh(p_rms, s, e, self.fps):
            onset = max(end + int(self.rng.uniform(*ctl.SMILE_DELAY_S) * self.fps), now)
            length = int((ctl.SMILE_HOLD_S + 1.0) * self.fps)
            shape = 0.8 * ctl._plateau(length, 5)
            self.pending.append(Reaction(onset, (M["smile"],), shape, "smile", yields_to_speech=False))
            cue = "laugh"
        elif aa.rising_pitch(p_pitch_fn(), s, e, self.fps):
            onset = max(end + int(self.rng.uniform(*ctl.QUESTION_DELAY_S) * self.fps), now)
            length = int(ctl.BROW_LEN_S * self.fps)
            if self.rng.random() < 0.6:
                self.pending.append(Reaction(onset, (M["brow_raise"],), 0.75 * ctl._plateau(length, 4), "brow_raise"))
            else:
                tilt = self.rng.choice([-1, 1]) * ctl.TILT_DEG * ctl._plateau(length, 5)
                self.pending.append(Reaction(onset, (M["head_roll"],), tilt, "head_tilt"))
            cue = "question"
        else:
            if self.rng.random() > ctl.NOD_PROB:
                return
            onset = max(end + int(self.rng.uniform(*ctl.NOD_DELAY_S) * self.fps), now)
            length = int(ctl.NOD_LEN_S * self.fps)
            depth = self.rng.uniform(*ctl.NOD_DEPTH_DEG)
            shape = -depth * ctl._window(length)
            if self.rng.random() < 0.3:  # a double nod
                shape = np.concatenate([shape, -0.7 * depth * ctl._window(length)])
            self.pending.append(Reaction(onset, (M["head_pitch"],), shape, "nod"))
            cue = "phrase_end"
        self.events.append({"type": self.pending[-1].kind, "frame": int(self.pending[-1].onset), "cue": cue,
                            "cue_frame": int(end)})

    def next_frames(self, n: int) -> np.ndarray:
        """The next ``n`` rig rows ``(n, NUM_MOTION)``; the history must reach ``lookahead`` frames past them."""
        fps = self.fps
        frames_in_hist = aa.num_frames(len(self.self_hist), fps, self.sr)
        if self.next_frame + n + self.lookahead > self.hist_frame0 + frames_in_hist + 1:
            raise EngineError("next_frames: not enough audio pushed for these frames and the lookahead")
        self_vad = aa.voice_activity(self.self_hist, fps, self.sr)
        mouth = aa.lipflap_mouth(self.self_hist, fps, self.sr)
        self_rms = aa.frame_rms(self.self_hist, fps, self.sr)
        p_vad = aa.voice_activity(self.partner_hist, fps, self.sr)
        p_rms = aa.frame_rms(self.partner_hist, fps, self.sr)
        pitch_cache: list[np.ndarray] = []

        def partner_pitch() -> np.ndarray:  # YIN only when a phrase ends
            if not pitch_cache:
                pitch_cache.append(aa.pitch_track(self.partner_hist, fps, self.sr))
            return pitch_cache[0]

        out = np.zeros((n, NUM_MOTION), np.float32)
        emo = emotion_vector(self.emotion, TEXT_EMOTION_INTENSITY if self.emotion != "neutral" else 0.0)
        decay = math.exp(-1.0 / (LOUDNESS_DECAY_S * fps))
        for i in range(n):
            f = self.next_frame
            j = f - self.hist_frame0
            m = out[i]
            speaking = bool(self_vad[j])
            if p_vad[j]:
                if self.partner_run_start is None:
                    self.partner_run_start = f
                self.partner_silent = 0
                self.last_partner_active = f
            elif self.partner_run_start is not None:
                self.partner_silent += 1
                if self.partner_silent >= PHRASE_END_FRAMES:
                    self._phrase_end(self.partner_run_start, f - self.partner_silent + 1, p_rms, partner_pitch)
                    self.partner_run_start = None
            listening = f - self.last_partner_active < LISTEN_HANGOVER_FRAMES
            state = "speak" if speaking else "listen" if listening else "idle"

            m[[M["jaw_open"], M["mouth_round"], M["mouth_wide"]]] = mouth[j]
            m[[M["emo_happy"], M["emo_sad"], M["emo_surprised"], M["emo_angry"]]] = emo
            m[M["smile"]] += {"happy": 0.35, "sad": -0.3, "angry": -0.15}.get(self.emotion, 0.0)
            m[M["brow_raise"]] += {"surprised": 0.4, "angry": -0.45, "sad": 0.1}.get(self.emotion, 0.0)
            m[M["breath"]] = math.sin(2 * math.pi * f / fps / self.breath_period + self.breath_phase)
            for name, std in DRIFT_DEG.items():
                m[M[name]] += self._walk(name, DRIFT_TAU_S * (2.0 if name == "body_yaw" else 1.0), std)
            # Speaking: loudness beats nod the head, and the head wanders more.
            self.loud_ref = max(float(self_rms[j]), self.loud_ref * decay)
            level = float(self_rms[j]) / self.loud_ref if speaking else 0.0
            self.beat += np.array([BEAT_FAST, BEAT_SLOW]) * (level - self.beat)
            speak_yaw = self._walk("speak_yaw", SPEAK_YAW_TAU_S, SPEAK_YAW_DEG)
            if speaking:
                m[M["head_pitch"]] -= BEAT_PITCH_DEG * (self.beat[0] - self.beat[1])
                m[M["head_yaw"]] += speak_yaw
            self._gaze(f, state)
            m[M["gaze_x"]], m[M["gaze_y"]] = self.gaze
            self._blink(f, state)
            self._apply_reactions(f, m, speaking)
            self.prev_state = state
            self.next_frame += 1
        self._trim()
        return clip_to_range(out)

    def _gaze(self, f: int, state: str) -> None:
        if f >= self.gaze_until or state != self.prev_state:
            fps, rng = self.fps, self.rng
            if state == "idle":
                self.gaze_target = rng.uniform([-0.6, -0.3], [0.6, 0.4])
                hold = rng.uniform(0.8, 2.5)
            elif state == "speak" and self.prev_state != "speak":
                self.gaze_target = np.array([rng.choice([-0.5, 0.5]), rng.uniform(0.1, 0.35)])
                hold = rng.uniform(0.4, 1.4)
            else:
                self.gaze_target = rng.normal(0, 0.06, size=2)
                hold = rng.uniform(0.4, 1.4)
            self.gaze_until = f + max(1, int(hold * fps))
        self.gaze += GAZE_SACCADE * (self.gaze_target - self.gaze)

    def _blink(self, f: int, state: str) -> None:
        if f >= self.next_blink:
            shape = ctl.BLINK_SHAPE
            self.pending.append(Reaction(f, (M["blink_l"], M["blink_r"]), shape, "blink", yields_to_speech=False))
            rate = ctl.BLINK_RATE_HZ[state]
            self.next_blink = f + max(shape.size + 2, int(self.rng.exponential(1.0 / rate) * self.fps))

    def _apply_reactions(self, f: int, m: np.ndarray, speaking: bool) -> None:
        keep = []
        for r in self.pending:
            if r.onset == f and speaking and r.yields_to_speech:
                continue  # the controller's rule: no listening reaction while talking
            k = f - r.onset
            if 0 <= k < r.shape.size:
                m[list(r.channels)] += r.shape[k]
            if k < r.shape.size - 1:
                keep.append(r)
        self.pending = keep


class RigEngine(Engine):
    """The traditional pipeline as an engine: ``StreamingRig`` poses, then ``Renderer`` frames.

    Args:
        character: must be a world character (``STYLE:SEED``).
        resolution: output frame size in pixels.
        frames_per_chunk: frames per chunk (4 matches the tiny Online DiT, so latencies compare).
        lookahead_frames: audio frames past a chunk's end the rig reads (its analysis windows need 1).
    """

    name = "rig"
    compute_budget_s = 0.1  # rig + render of one chunk take ~20-40 ms on one core; leave room for contention

    def __init__(self, character: Character, resolution: int = 256, frames_per_chunk: int = 4,
                 lookahead_frames: int = 1) -> None:
        if character.world is None:
            raise EngineError(
                "the rig engine performs world characters only (a character id such as 'anime:42'); "
                "start the server with --checkpoint to perform an arbitrary reference image"
            )
        self.character = character
        self.frames_per_chunk, self.lookahead_frames, self.resolution = frames_per_chunk, lookahead_frames, resolution
        self.renderer = Renderer(sample_identity(character.world.seed, character.world.style), resolution)
        self.rig = StreamingRig(character.world.seed, lookahead_frames)

    def _poses(self, chunk: ChunkInput, timings: dict[str, float]) -> np.ndarray:
        self.rig.set_text(chunk.text)
        self.rig.push(chunk.self_pcm, chunk.partner_pcm)
        return self.rig.next_frames(self.frames_per_chunk)  # (F, NUM_MOTION)

    def _render(self, poses: np.ndarray, timings: dict[str, float]) -> np.ndarray:
        return np.stack([self.renderer.render(p) for p in poses])  # (F, H, W, 3)

    def stages(self) -> list[Stage]:
        return [("rig", self._poses), ("render", self._render)]

    def skip(self, chunk: ChunkInput) -> None:
        self._poses(chunk, {})  # state (reactions, blinks, history) advances as if shown
