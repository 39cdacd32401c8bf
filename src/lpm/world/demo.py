"""Render a world performance to a watchable mp4 (both voices muxed), with a caption band under the video."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from lpm.data.video import write_mp4
from lpm.world.identity import TRAIN_STYLES
from lpm.world.render import Renderer
from lpm.world.synth import FPS, ClipSpec, make_clip

BAND_H = 28
EVENT_SHOW_S = 0.6  # how long an event's name stays on the band
STATE_COLOURS = {"speak": (220, 60, 60), "listen": (60, 120, 220), "idle": (150, 150, 150)}


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
