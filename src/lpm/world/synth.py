"""Synthesize world clips in the clip format: identity + dialogue + controller + renderer, in parallel.

Clip ``i`` of a run with seed ``K`` draws everything from ``np.random.default_rng([K, i, split_code])``, so the
same seed always gives the same clip, whichever worker makes it. Identities of the ``val`` split come from a
seed range disjoint from ``train`` (held-out identities); ``zeroshot`` uses the held-out style.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from lpm.data.clip import SPLITS, read_manifest, write_clip
from lpm.fsutil import atomic_write_text
from lpm.world.controller import Performance, frames_for, perform_conversation
from lpm.world.dialogue import MODES, Conversation, build_conversation
from lpm.world.identity import ALL_STYLES, TRAIN_STYLES, ZEROSHOT_STYLE, Identity, sample_identity
from lpm.world.motion import BODY_VIEWS, EMOTIONS, MOTION_INDEX, MOTION_NAMES, neutral_pose
from lpm.world.render import Renderer
from lpm.world.speech import SAMPLE_RATE

FPS = 24
# Identity seeds per split live in disjoint ranges so val identities are never trained on.
SPLIT_CODE = {"train": 0, "val": 1, "zeroshot": 2}
IDENTITY_SEED_BASE = {"train": 0, "val": 10_000_000, "zeroshot": 20_000_000}
EMOTION_WEIGHTS = (0.4, 0.2, 0.15, 0.125, 0.125)
INTENSITY_WORDS = ((0.45, "slightly"), (0.75, "quite"), (1.01, "very"))
BEHAVIOUR_TEXT = {
    "speak": "talking to someone",
    "listen": "listening to someone talk",
    "conversation": "in a lively conversation",
    "idle": "waiting quietly",
}
EMOTION_ADJ = {"happy": "happy", "sad": "sad", "surprised": "surprised", "angry": "angry"}
# Most clips face front; some turn the body a little so the model sees other angles.
BODY_TURN_PROB = 0.2
BODY_TURN_DEG = 30.0
MIXED_SPLIT_P = (0.8, 0.1, 0.1)


@dataclass(frozen=True)
class ClipSpec:
    """Everything needed to make one clip deterministically."""

    seed: int
    index: int
    split: str
    style: str
    seconds: float
    res: int
    mode: str | None = None
    identity_seed: int | None = None

    @property
    def clip_id(self) -> str:
        return f"{self.split}_{self.style}_{self.seed}_{self.index:05d}"


def caption(identity: Identity, emotion: str, intensity: float, mode: str) -> str:
    """The clip's text: appearance, emotion (the text-control signal) and behaviour."""
    mood = "calm and neutral"
    if emotion != "neutral":
        word = next(w for lim, w in INTENSITY_WORDS if intensity < lim)
        mood = f"{word} {EMOTION_ADJ[emotion]}"
    return f"{identity.describe()}, {mood}, {BEHAVIOUR_TEXT[mode]}."


def exemplar_pose(emotion: str) -> np.ndarray:
    """The rest pose of the expression exemplar ``expr_<emotion>`` (``neutral``: the global image's pose)."""
    pose = neutral_pose()[0].copy()
    if emotion != "neutral":
        pose[MOTION_INDEX[f"emo_{emotion}"]] = 1.0
    pose[MOTION_INDEX["smile"]] = {"happy": 0.6, "sad": -0.4, "angry": -0.2}.get(emotion, 0.0)
    pose[MOTION_INDEX["brow_raise"]] = {"surprised": 0.8, "angry": -0.7, "sad": 0.2}.get(emotion, 0.0)
    return pose


def render_references(renderer: Renderer) -> dict[str, np.ndarray]:
    """Global image, four body views and one exemplar per emotion, all at rest, eyes open.

    The exemplars show their emotion with the lips closed (smile and width stay, the jaw and rounding the emotion
    would add do not): a model that draws each frame on its emotion's exemplar (``DiTConfig.expression_canvas``)
    must take the mouth's opening from the audio, and exemplars with the surprised / happy jaw open kept the mouth
    open in silence (docs/learning.md, arm 39).
    """
    refs = {}
    rest = neutral_pose()[0]
    refs["global"] = renderer.render(rest)
    for view, yaw in BODY_VIEWS.items():
        pose = rest.copy()
        pose[MOTION_INDEX["body_yaw"]] = yaw
        refs[f"body_{view}"] = renderer.render(pose)
    for emotion in EMOTIONS:
        refs[f"expr_{emotion}"] = renderer.render(exemplar_pose(emotion), lips_closed=True)
    return refs


@dataclass
class WorldClip:
    """One synthesized clip in memory (before it is written)."""

    spec: ClipSpec
    identity: Identity
    conversation: Conversation
    performance: Performance
    emotion: str
    intensity: float
    caption: str


def make_clip(spec: ClipSpec) -> WorldClip:
    """Draw identity, emotion, dialogue and performance for a spec (no rendering)."""
    rng = np.random.default_rng([spec.seed, spec.index, SPLIT_CODE[spec.split]])
    id_seed = spec.identity_seed
    if id_seed is None:
        id_seed = IDENTITY_SEED_BASE[spec.split] + int(rng.integers(0, 9_999_999))
    identity = sample_identity(id_seed, spec.style)
    emotion = str(rng.choice(EMOTIONS, p=EMOTION_WEIGHTS))
    intensity = 0.0 if emotion == "neutral" else float(rng.uniform(0.3, 1.0))
    n_frames = max(1, int(round(spec.seconds * FPS)))
    n_samples = int(round(n_frames * SAMPLE_RATE / FPS))
    conv = build_conversation(rng, n_samples, spec.mode)
    body_yaw = float(rng.uniform(-BODY_TURN_DEG, BODY_TURN_DEG)) if rng.random() < BODY_TURN_PROB else 0.0
    perf = perform_conversation(conv, rng, emotion, intensity, body_yaw, FPS)
    assert perf.motion.shape[0] == frames_for(n_samples) == n_frames
    return WorldClip(spec, identity, conv, perf, emotion, intensity, caption(identity, emotion, intensity, conv.mode))


def write_world_clip(spec: ClipSpec, root: str | Path) -> dict:
    """Make, render and write one clip under ``root``; returns its manifest row."""
    clip = make_clip(spec)
    renderer = Renderer(clip.identity, spec.res)
    frames = renderer.render_sequence(clip.performance.motion)
    meta = {
        "id": spec.clip_id,
        "split": spec.split,
        "style": spec.style,
        "caption": clip.caption,
        "emotion": clip.emotion,
        "emotion_intensity": clip.intensity,
        "mode": clip.conversation.mode,
        "states": clip.performance.states,
        "events": clip.performance.events,
        "identity": clip.identity.to_dict(),
        "voices": {"self": clip.conversation.self_voice.__dict__, "partner": clip.conversation.partner_voice.__dict__},
        "segments": [s.to_dict() for s in clip.conversation.segments],
        "seeds": {"seed": spec.seed, "index": spec.index, "identity": clip.identity.seed},
        "source": "world",
    }
    return write_clip(Path(root) / spec.clip_id, frames, clip.conversation.stereo(),
                      render_references(renderer), meta, clip.performance.motion, MOTION_NAMES)


def plan(clips: int, seed: int, seconds: float, res: int, split: str = "mixed",
         styles: list[str] | None = None, mode: str | None = None) -> list[ClipSpec]:
    """The specs of a run: styles cycle over clips; ``mixed`` splits 80/10/10 into train/val/zeroshot."""
    if split != "mixed" and split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected mixed or one of {SPLITS}")
    if mode is not None and mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
    for s in styles or []:
        if s not in ALL_STYLES:
            raise ValueError(f"unknown style {s!r}; expected some of {ALL_STYLES}")
    if not 64 <= res <= 512:
        raise ValueError(f"--res must be within 64..512, got {res}")
    if seconds <= 0:
        raise ValueError(f"--seconds must be positive, got {seconds}")
    specs = []
    rng = np.random.default_rng([seed, 7])
    seen_styles = [s for s in (styles or TRAIN_STYLES) if s != ZEROSHOT_STYLE] or list(TRAIN_STYLES)
    for i in range(clips):
        sp = split if split != "mixed" else str(rng.choice(SPLITS, p=MIXED_SPLIT_P))
        if sp == "zeroshot":
            style = ZEROSHOT_STYLE if not styles or ZEROSHOT_STYLE in styles else styles[i % len(styles)]
        else:
            style = seen_styles[i % len(seen_styles)]
        specs.append(ClipSpec(seed, i, sp, style, seconds, res, mode))
    return specs


def _worker(args: tuple[ClipSpec, str]) -> dict:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    return write_world_clip(*args)


def write_manifest(root: Path, rows: list[dict]) -> None:
    """Merge rows into root/manifest.jsonl by id (atomically), keeping other clips already there."""
    existing = {}
    if (root / "manifest.jsonl").is_file():
        existing = {r["id"]: r for r in read_manifest(root)}
    for r in rows:
        existing[r["id"]] = r
    atomic_write_text(root / "manifest.jsonl",
                      "".join(json.dumps(r) + "\n" for r in sorted(existing.values(), key=lambda r: r["id"])))


def synth(out: str | Path, specs: list[ClipSpec], workers: int | None = None, progress: bool = True,
          ray: str | None = None) -> list[dict]:
    """Write all clips of ``specs`` under ``out`` (skipping complete ones) and update the manifest.

    Args:
        workers: local processes (default: all cores).
        ray: ``auto`` or a Ray cluster address: one Ray task per clip instead (``lpm.data.ray_jobs``), writing
            the same files.
    """
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    todo = [s for s in specs if not (root / s.clip_id / "meta.json").is_file()]
    done = [s for s in specs if s not in todo]
    rows = []
    for s in done:  # already complete from an earlier (interrupted) run: reuse
        meta = json.loads((root / s.clip_id / "meta.json").read_text())
        rows.append({k: meta[k] for k in ("id", "split", "style", "fps", "width", "height", "frames")}
                    | {"path": s.clip_id})
    workers = workers or os.cpu_count() or 1
    bar = tqdm(total=len(specs), initial=len(done), desc="synth clips", unit="clip", disable=not progress)
    if ray:
        from lpm.data.ray_jobs import ray_map

        for row in ray_map(write_world_clip, [(s, str(root)) for s in todo], ray):
            rows.append(row)
            bar.update()
            if len(rows) % 16 == 0:
                write_manifest(root, rows)
    elif workers <= 1 or len(todo) <= 1:
        for s in todo:
            rows.append(write_world_clip(s, root))
            bar.update()
    else:
        ctx = mp.get_context("fork")
        with ctx.Pool(workers) as pool:
            for row in pool.imap_unordered(_worker, [(s, str(root)) for s in todo]):
                rows.append(row)
                bar.update()
                if len(rows) % 16 == 0:
                    write_manifest(root, rows)
    bar.close()
    write_manifest(root, rows)
    return rows
