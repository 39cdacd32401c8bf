"""Render a world performance to a watchable mp4 (both voices muxed), with a caption band under the video; and
``lpm demo``: the trained Online model beside the traditional pipeline on a held-out character's conversation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from lpm.data.video import write_mp4
from lpm.world.controller import perform_audio
from lpm.world.identity import TRAIN_STYLES
from lpm.world.render import Renderer
from lpm.world.synth import FPS, IDENTITY_SEED_BASE, ClipSpec, make_clip

BAND_H = 28
EVENT_SHOW_S = 0.6  # how long an event's name stays on the band
STATE_COLOURS = {"speak": (220, 60, 60), "listen": (60, 120, 220), "idle": (150, 150, 150)}
PANEL = 256  # each side of the model demo is shown at this size (the tiny model makes 128 px)
LABEL_H = 18
RIG_DEMO_SECONDS = 12.0  # the rig-only demo (no checkpoint)
MODEL_DEMO_SECONDS = 10.0  # the model demo: ~60 chunks, well under a minute on a 2-core CPU


def annotate(frames: np.ndarray, states: list[str], events: list[dict]) -> np.ndarray:
    """Add a band under each frame naming the state and the reactions happening now.

    Args:
        frames: (F, H, W, 3) uint8. Returns (F, H + BAND_H, W, 3) uint8.
    """
    n, h, w = frames.shape[:3]
    font = ImageFont.load_default()
    out = np.empty((n, h + BAND_H, w, 3), np.uint8)
    hold = int(EVENT_SHOW_S * FPS)
    reactions = [e for e in events if e["type"] != "blink"]
    for i in range(n):
        band = Image.new("RGB", (w, BAND_H), (20, 20, 20))
        d = ImageDraw.Draw(band)
        d.rectangle([0, 0, 6, BAND_H], fill=STATE_COLOURS[states[i]])
        now = [e["type"].replace("_", " ") for e in reactions if e["frame"] <= i < e["frame"] + hold]
        d.text((10, 3), states[i], fill=(255, 255, 255), font=font)
        d.text((10, 15), " ".join(now)[: w // 6], fill=(255, 210, 80), font=font)
        out[i, :h] = frames[i]
        out[i, h:] = np.asarray(band)
    return out


def render_world_video(out: str | Path, seed: int = 0, style: str | None = None, seconds: float = 8.0,
                       res: int = 256, mode: str | None = "conversation", split: str = "train") -> Path:
    """Synthesize one clip (identity, dialogue, controller) and write it as an mp4 with stereo audio."""
    if style is None:
        style = TRAIN_STYLES[seed % len(TRAIN_STYLES)]
    clip = make_clip(ClipSpec(seed, 0, split, style, seconds, res, mode))
    frames = Renderer(clip.identity, res).render_sequence(clip.performance.motion)
    frames = annotate(frames, clip.performance.states, clip.performance.events)
    return write_mp4(out, frames, fps=FPS, audio=clip.conversation.stereo())


def side_by_side(left: np.ndarray, right: np.ndarray, labels: tuple[str, str], panel: int = PANEL) -> np.ndarray:
    """Two videos as labelled panels, each resized to ``panel`` px.

    Args:
        left, right: (F, H, W, 3) uint8 (the same F). Returns (F, LABEL_H + panel, 2 panel, 3) uint8.
    """
    font = ImageFont.load_default()
    head = Image.new("RGB", (2 * panel, LABEL_H), (20, 20, 20))
    draw = ImageDraw.Draw(head)
    for i, label in enumerate(labels):
        draw.text((i * panel + 6, 3), label, fill=(255, 255, 255), font=font)
    out = np.empty((len(left), LABEL_H + panel, 2 * panel, 3), np.uint8)
    out[:, :LABEL_H] = np.asarray(head)
    for i, side in enumerate((left, right)):
        for f, frame in enumerate(side):
            im = Image.fromarray(frame)
            if im.size != (panel, panel):
                im = im.resize((panel, panel), Image.Resampling.BICUBIC)
            out[f, LABEL_H:, i * panel:(i + 1) * panel] = np.asarray(im)
    return out


def render_model_demo(out: str | Path, checkpoint: str, seed: int = 5, seconds: float = MODEL_DEMO_SECONDS,
                      progress: bool = True) -> Path:
    """A held-out (``val``-range) world character's conversation performed by the DiT checkpoint (through the
    streaming ``Session``, as ``lpm generate``) beside the traditional pipeline (the rig driven by the same
    audio, ``perform_audio``), rendered at the model's resolution; both voices muxed (self left, partner right).
    """
    from contextlib import closing

    from lpm.runtime.dit_engine import DiTEngine, DiTEngineConfig
    from lpm.runtime.engines import Character, WorldCharacter
    from lpm.runtime.generate import OfflineRun

    style = TRAIN_STYLES[seed % len(TRAIN_STYLES)]
    identity_seed = IDENTITY_SEED_BASE["val"] + seed  # never a training identity
    clip = make_clip(ClipSpec(seed, 0, "val", style, seconds, PANEL, "conversation", identity_seed))
    conv = clip.conversation
    engine = DiTEngine.load(Character(world=WorldCharacter(style, identity_seed)),
                            DiTEngineConfig(checkpoint=checkpoint, seed=seed))
    resolution = engine.resolution
    run = OfflineRun(engine, conv.self_pcm, conv.partner_pcm, clip.caption, progress)
    with closing(iter(run)) as frames:
        model = np.stack(list(frames))
    rig = perform_audio(conv.self_pcm, conv.partner_pcm, seed, clip.emotion, clip.intensity).motion
    traditional = Renderer(clip.identity, resolution).render_sequence(rig)
    n = min(len(model), len(traditional))
    labels = (f"LPM model ({Path(checkpoint).stem})", "traditional pipeline (audio -> rig)")
    video = side_by_side(model[:n], traditional[:n], labels)
    return write_mp4(out, video, fps=FPS, audio=conv.stereo())
