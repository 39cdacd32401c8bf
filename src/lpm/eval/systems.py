"""Systems the bench compares: each turns a clip's inputs (audio, references, text) into frames.

A ``System`` has a ``name`` and ``generate(inputs) -> frames``; ``stream`` yields the same frames chunk by
chunk (the bench times each chunk for fps and latency). Offline systems inherit a ``stream`` that computes the
whole clip before its first chunk, which is exactly their latency; streaming systems override it.

- ``truth``: the ground-truth render (the ceiling; it validates the instruments).
- ``traditional``: the world's rig + behaviour controller performing the clip's audio (``perform_audio``). It
  needs a hand-built rig for the character, which only world characters have.
- ``static``: the global reference image held still (the floor).
- ``base`` / ``online`` (and ``online+refiner``): trained lpm models, from ``--checkpoint`` or the shipped
  ``DEFAULT_CHECKPOINTS``; a loader per checkpoint kind registers in ``MODEL_LOADERS`` (DiT checkpoints:
  ``lpm.eval.dit_systems``). A model that cannot run reports why instead.
"""

from __future__ import annotations

import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lpm.world.controller import perform_audio
from lpm.world.identity import Identity
from lpm.world.motion import EMOTIONS, MOTION_INDEX
from lpm.world.render import Renderer

FPS = 24
SAMPLE_RATE = 16000
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS
# Frames per chunk that systems yield (the Online model's chunk is 4 latent frames; the bench streams at this
# granularity for every system so latencies compare).
CHUNK_FRAMES = 12
# The traditional pipeline analyses audio in blocks of this many seconds (its voice activity and pitch analysis
# look seconds around each frame), with this much earlier audio as context.
TRADITIONAL_BLOCK_S = 4.0
TRADITIONAL_CONTEXT_S = 3.0
# Caption words of the world's text control (``lpm.world.synth.caption``) and the intensity each stands for.
INTENSITY_WORDS = {"slightly": 0.4, "quite": 0.6, "very": 0.9}


@dataclass
class ClipInputs:
    """What a system may use to perform one clip (or one long session).

    Attributes:
        self_audio, partner_audio: (N,) float32 mono at 16 kHz.
        refs: reference name (``global``, ``body_front``, ``expr_happy``, ...) -> (H, W, 3) uint8.
        caption: the text control.
        body_yaw_deg: pose control: the body turn the performance should hold (degrees, 0 = front).
        identity: the world character's hand-built rig (only ``traditional`` and ``truth`` may use it).
        truth_motion: (F, NUM_MOTION) ground-truth rig motion (only ``truth``).
        truth_video: (F, H, W, 3) uint8 ground-truth frames when they exist on disk (only ``truth``).
    """

    clip_id: str
    split: str
    style: str
    num_frames: int
    self_audio: np.ndarray
    partner_audio: np.ndarray
    refs: dict[str, np.ndarray]
    caption: str
    body_yaw_deg: float = 0.0
    identity: Identity | None = None
    truth_motion: np.ndarray | None = None
    truth_video: np.ndarray | None = None
    extra: dict = field(default_factory=dict)

    @property
    def res(self) -> int:
        return int(self.refs["global"].shape[0])


class SystemUnavailable(RuntimeError):
    """A system that cannot run here; the message says why (reported, never replaced by numbers)."""


class System(ABC):
    """A performer: clip inputs in, frames out."""

    name: str = "system"
    measures_speed: bool = True  # False for recordings (truth): no compute to time
    note: str = ""

    def unavailable(self) -> str | None:
        """None when the system can run, else the reason it cannot."""
        return None

    @abstractmethod
    def generate(self, inputs: ClipInputs) -> np.ndarray:
        """Perform a whole clip.

        Returns:
            (F, H, W, 3) uint8 with F = inputs.num_frames.
        """

    def needs_audio_until(self, inputs: ClipInputs, frame_end: int) -> int:
        """The frame up to which audio must have arrived before frames up to ``frame_end`` can be made.

        Offline systems need the whole clip; streaming systems override this (chunk end + lookahead).
        """
        return inputs.num_frames

    def stream(self, inputs: ClipInputs, chunk_frames: int = CHUNK_FRAMES) -> Iterator[np.ndarray]:
        """Yield (<= chunk_frames, H, W, 3) uint8 chunks in order; offline: everything is computed first."""
        frames = self.generate(inputs)
        for s in range(0, len(frames), chunk_frames):
            yield frames[s: s + chunk_frames]


class TruthSystem(System):
    """The ground-truth render: the recorded video, or the true motion rendered with the character's rig."""

    name = "truth"
    measures_speed = False
    note = "ground-truth render: the ceiling of every metric; it validates the instruments"

    def generate(self, inputs: ClipInputs) -> np.ndarray:
        if inputs.truth_video is not None:
            return inputs.truth_video
        return np.concatenate(list(self.stream(inputs)))

    def stream(self, inputs: ClipInputs, chunk_frames: int = CHUNK_FRAMES) -> Iterator[np.ndarray]:
        if inputs.truth_video is not None:
            yield from super().stream(inputs, chunk_frames)
            return
        if inputs.truth_motion is None or inputs.identity is None:
            raise SystemUnavailable(f"{inputs.clip_id}: no ground truth (video or motion + identity)")
        renderer = Renderer(inputs.identity, inputs.res)
        for s in range(0, inputs.num_frames, chunk_frames):
            yield renderer.render_sequence(inputs.truth_motion[s: s + chunk_frames])


class StaticSystem(System):
    """The global reference held still: the floor (no lip sync, no reactions, perfect identity)."""

    name = "static"
    note = "the global reference image held still: the floor"

    def generate(self, inputs: ClipInputs) -> np.ndarray:
        return np.repeat(inputs.refs["global"][None], inputs.num_frames, axis=0)

    def needs_audio_until(self, inputs: ClipInputs, frame_end: int) -> int:
        return frame_end  # ignores the audio: each chunk can be shown as its time comes


def caption_emotion(caption: str) -> tuple[str, float]:
    """Emotion and intensity named in a world caption (``..., quite happy, ...``); neutral when none."""
    words = re.findall(r"[a-z]+", caption.lower())
    for i, w in enumerate(words):
        if w in EMOTIONS and w != "neutral":
            prev = words[i - 1] if i else ""
            return w, INTENSITY_WORDS.get(prev, 0.6)
    return "neutral", 0.0


class TraditionalSystem(System):
    """The rule-driven rig pipeline: voice activity, lip flap and pitch cues drive the world's controller.

    Needs the character's hand-built rig (``inputs.identity``): a real character would need one made by hand.
    Text control is a keyword rule on the caption; pose control sets the rig's body turn.
    """

    name = "traditional"
    note = ("the world's rig + behaviour controller performing the audio (perform_audio); needs a hand-built rig "
            "per character")

    def __init__(self, seed: int = 0):
        self.seed = seed

    def _motion(self, inputs: ClipInputs, start: int, stop: int) -> np.ndarray:
        """Rig motion for frames [start, stop), analysed with TRADITIONAL_CONTEXT_S of earlier audio."""
        ctx = min(start, int(TRADITIONAL_CONTEXT_S * FPS))
        s0, s1 = (start - ctx) * SAMPLES_PER_FRAME, stop * SAMPLES_PER_FRAME
        emotion, intensity = caption_emotion(inputs.caption)
        perf = perform_audio(inputs.self_audio[s0:s1], inputs.partner_audio[s0:s1], seed=self.seed + start,
                             emotion=emotion, intensity=intensity)
        motion = perf.motion[ctx: ctx + stop - start].copy()
        if len(motion) < stop - start:  # audio a few samples short of the last frame
            motion = np.concatenate([motion, np.repeat(motion[-1:], stop - start - len(motion), 0)])
        motion[:, MOTION_INDEX["body_yaw"]] += inputs.body_yaw_deg
        return motion

    def generate(self, inputs: ClipInputs) -> np.ndarray:
        return np.concatenate(list(self.stream(inputs)))

    @staticmethod
    def _block(inputs: ClipInputs) -> int:
        block = int(TRADITIONAL_BLOCK_S * FPS)
        # A clip up to two blocks long is analysed whole (as perform_audio is meant to be used).
        return inputs.num_frames if inputs.num_frames <= 2 * block else block

    def needs_audio_until(self, inputs: ClipInputs, frame_end: int) -> int:
        block = self._block(inputs)
        return min(inputs.num_frames, -(-frame_end // block) * block)  # the end of the block holding the frame

    def stream(self, inputs: ClipInputs, chunk_frames: int = CHUNK_FRAMES) -> Iterator[np.ndarray]:
        if inputs.identity is None:
            raise SystemUnavailable(f"{inputs.clip_id}: no hand-built rig for this character")
        renderer = Renderer(inputs.identity, inputs.res)
        block = self._block(inputs)
        for b0 in range(0, inputs.num_frames, block):
            motion = self._motion(inputs, b0, min(inputs.num_frames, b0 + block))
            for s in range(0, len(motion), chunk_frames):
                yield renderer.render_sequence(motion[s: s + chunk_frames])


# Checkpoint kind -> loader returning a ready System (or raising with the reason it cannot run).
MODEL_LOADERS: dict[str, Callable[..., System]] = {}
# The model systems a bench can run, and the shipped checkpoint each uses when none is given.
MODEL_SYSTEMS = ("base", "online", "online+refiner")
DEFAULT_CHECKPOINTS = {"base": "checkpoints/base_tiny.safetensors", "online": "checkpoints/online_tiny.safetensors"}


def register_model_loader(kind: str, loader: Callable[..., System]) -> None:
    """Let ``lpm bench --checkpoint`` run checkpoints of ``kind`` (``loader(name, path, **settings) -> System``;
    ``settings`` are the bench's options for that system, e.g. ``steps`` of ``base``)."""
    MODEL_LOADERS[kind] = loader


class ModelSystem(System):
    """A trained lpm model (``base`` or ``online``) from a checkpoint, when a loader for its kind exists.

    Args:
        settings: keyword options passed to the loader (None values left out).
    """

    def __init__(self, name: str, checkpoint: str | Path | None, settings: dict | None = None):
        self.name = name
        self.checkpoint = Path(checkpoint) if checkpoint else None
        self._system: System | None = None
        self._reason: str | None = None
        self.note = f"trained lpm model ({name})"
        if self.checkpoint is None:
            given = name.split("+")[0]
            shipped = DEFAULT_CHECKPOINTS.get(given)
            if shipped and Path(shipped).is_file():
                self._reason = (f"no trained {given} checkpoint given (--checkpoint {given}=PATH) and "
                                f"--no-default-checkpoints leaves out the shipped {shipped}")
            else:
                self._reason = (f"no trained {given} checkpoint given (--checkpoint {given}=PATH) and none shipped at "
                                f"{shipped or '(no default)'}")
            return
        import lpm.eval.dit_systems  # noqa: F401 - registers the loader of DiT checkpoints
        from lpm.training.checkpoint import CheckpointError, read_metadata

        try:
            kind = read_metadata(self.checkpoint)["kind"]
        except CheckpointError as e:
            self._reason = str(e)
            return
        loader = MODEL_LOADERS.get(kind)
        if loader is None:
            self._reason = (f"checkpoint {self.checkpoint} holds {kind!r} weights but no generator is registered "
                            f"for that kind (lpm.eval.systems.register_model_loader); known: "
                            f"{sorted(MODEL_LOADERS) or 'none yet'}")
            return
        try:
            self._system = loader(name, self.checkpoint,
                                  **{k: v for k, v in (settings or {}).items() if v is not None})
        except Exception as e:  # noqa: BLE001 - a checkpoint that cannot run is a report row, never a traceback
            self._reason = f"{self.checkpoint}: {e}" if str(self.checkpoint) not in str(e) else str(e)
            return
        self.measures_speed = self._system.measures_speed
        self.note = self._system.note or self.note

    def unavailable(self) -> str | None:
        return self._reason or (self._system.unavailable() if self._system is not None else None)

    def generate(self, inputs: ClipInputs) -> np.ndarray:
        if self._system is None:
            raise SystemUnavailable(self._reason or "not loaded")
        return self._system.generate(inputs)

    def stream(self, inputs: ClipInputs, chunk_frames: int = CHUNK_FRAMES) -> Iterator[np.ndarray]:
        if self._system is None:
            raise SystemUnavailable(self._reason or "not loaded")
        return self._system.stream(inputs, chunk_frames)

    def needs_audio_until(self, inputs: ClipInputs, frame_end: int) -> int:
        if self._system is None:
            return inputs.num_frames
        return self._system.needs_audio_until(inputs, frame_end)


def timed_stream(system: System, inputs: ClipInputs,
                 chunk_frames: int = CHUNK_FRAMES) -> Iterator[tuple[np.ndarray, float, int]]:
    """Yield (chunk, compute seconds spent producing it, frame up to which it needed audio)."""
    it = system.stream(inputs, chunk_frames)
    done = 0
    while True:
        t0 = time.perf_counter()
        try:
            chunk = next(it)
        except StopIteration:
            return
        secs = time.perf_counter() - t0
        done += len(chunk)
        yield chunk, secs, system.needs_audio_until(inputs, done)


def make_systems(checkpoints: dict[str, str] | None = None, seed: int = 0, refiner: bool = False,
                 base_steps: int | None = None) -> list[System]:
    """The systems of one bench run, in report order.

    Args:
        checkpoints: system name (``MODEL_SYSTEMS`` or any other) -> checkpoint path.
        refiner: add ``online+refiner``: the online checkpoint (or the one given for ``online+refiner``) with the
            engine's one-step refiner on, so its effect is measured in the same run.
        base_steps: ODE steps per window of ``base`` (None: its default, ``lpm.eval.dit_systems.BaseSampling``).
    """
    checkpoints = checkpoints or {}
    systems = [TruthSystem(), TraditionalSystem(seed), StaticSystem(),
               ModelSystem("base", checkpoints.get("base"), {"steps": base_steps}),
               ModelSystem("online", checkpoints.get("online"))]
    if refiner or "online+refiner" in checkpoints:
        systems.append(ModelSystem("online+refiner", checkpoints.get("online+refiner", checkpoints.get("online"))))
    # Any other named checkpoint (e.g. an intermediate stage, ``ode=runs/ode/dit_ema.safetensors``) is rated too.
    systems += [ModelSystem(name, path) for name, path in checkpoints.items() if name not in MODEL_SYSTEMS]
    return systems
