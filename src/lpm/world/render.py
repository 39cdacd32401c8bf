"""The character renderer: an identity plus one motion row in, one RGB frame out.

Frames are drawn at 2x and box-downsampled (anti-aliasing at every resolution). Everything that depends
only on the identity is cached (background, body per quantised yaw, textures); per frame only the head
base (numpy, on the head's box) and the features (PIL polygons) are drawn.

Run ``python -m lpm.world.render --bench`` for frames/s on one core, ``--sheet PATH`` for a contact sheet.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

import numpy as np
from PIL import Image, ImageDraw

from lpm.errors import LpmError
from lpm.world.identity import ALL_STYLES, Identity, sample_identity
from lpm.world.motion import BODY_VIEWS, MOTION_INDEX, MOTION_RANGE, NUM_MOTION, emotion_vector
from lpm.world.render_body import BodyPainter, render_background
from lpm.world.render_face import FacePainter
from lpm.world.render_head import HeadPainter
from lpm.world.render_parts import FRONT_Z, PartPainter
from lpm.world.render_rig import BREATH_FRAC, FaceState, HeadFrame, face_state, head_frame
from lpm.world.render_styles import make_look

SUPERSAMPLE = 2  # draw at this multiple of the output size, then box-filter down
MIN_RES, MAX_RES = 64, 512
MAX_BACKDROPS = 24  # cached background+body composites (body views x breath offsets) per renderer


class RenderError(LpmError, ValueError):
    """A bad resolution or pose given to the renderer."""


class Renderer:
    """Renders one identity at one resolution; keeps that identity's caches."""

    def __init__(self, identity: Identity, res: int):
        if isinstance(res, bool) or not isinstance(res, (int, np.integer)) or not MIN_RES <= res <= MAX_RES:
            raise RenderError(f"res must be an int in [{MIN_RES}, {MAX_RES}], got {res!r}")
        self.identity = identity
        self.res = int(res)
        self.canvas = self.res * SUPERSAMPLE
        self.look = make_look(identity)
        self.background = render_background(identity, self.canvas)
        self.body = BodyPainter(identity, self.look, self.canvas)
        self.head = HeadPainter(identity, self.look, self.res, SUPERSAMPLE)
        self.face = FacePainter(identity, self.look)
        self.parts = PartPainter(identity, self.look)
        self._backdrops: dict[tuple[int, int], Image.Image] = {}

    def _backdrop(self, view_yaw: float, lift: int) -> Image.Image:
        """Background with the body pasted on, cached per (body view, breath offset)."""
        rgb, mask, top = self.body.sprite(view_yaw)
        key = (id(rgb), lift)
        img = self._backdrops.get(key)
        if img is None:
            if len(self._backdrops) >= MAX_BACKDROPS:
                self._backdrops.pop(next(iter(self._backdrops)))  # drop the oldest
            img = self.background.copy()
            img.paste(rgb, (0, top - lift), mask)
            self._backdrops[key] = img
        return img

    def _place(self, pose: np.ndarray, lips_closed: bool = False) -> tuple[FaceState, HeadFrame]:
        pose = np.asarray(pose, dtype=np.float64)
        if pose.shape != (NUM_MOTION,):
            raise RenderError(f"pose must have shape ({NUM_MOTION},), got {pose.shape}")
        state = face_state(pose)
        if lips_closed:  # the jaw shut and the lips unrounded, whatever the emotion adds (smile and width stay)
            state = dataclasses.replace(state, jaw=0.0, round=0.0)
        ident = self.identity
        return state, head_frame(state, self.canvas, ident.head_width, ident.head_height, ident.chin_taper)

    def render(self, pose: np.ndarray, lips_closed: bool = False) -> np.ndarray:
        """Render one frame.

        Args:
            pose: (NUM_MOTION,) float, lpm.world.motion layout.
            lips_closed: draw the mouth shut (jaw and rounding 0 after the emotion is folded in).
        Returns:
            (res, res, 3) uint8 RGB.
        """
        state, frame = self._place(pose, lips_closed)
        parts, hair = self.parts.parts(frame)
        lift = int(round(state.breath * BREATH_FRAC * self.canvas))
        if hair is not None and hair.z < 0:
            # Seen from the front, long hair hangs behind the shoulders: between backdrop and body.
            img = self.background.copy()
            draw = ImageDraw.Draw(img, "RGBA")
            hair.draw(draw)
            body_rgb, body_mask, top = self.body.sprite(state.body_view_yaw)
            img.paste(body_rgb, (0, top - lift), body_mask)
        else:
            img = self._backdrop(state.body_view_yaw, lift).copy()
            draw = ImageDraw.Draw(img, "RGBA")
            if hair is not None:
                hair.draw(draw)
        for part in parts:
            if part.z < FRONT_Z:
                part.draw(draw)
        rgb, alpha, (x0, y0) = self.head.paint(frame, state.flush)
        # Nearest upsampling: the final box downsample gives back exactly the head's own (already
        # anti-aliased) pixels, while the features drawn over it still get 2x supersampling.
        size = (rgb.shape[1] * SUPERSAMPLE, rgb.shape[0] * SUPERSAMPLE)
        head = Image.fromarray(np.dstack([rgb, alpha])).resize(size, Image.Resampling.NEAREST)
        img.paste(head, (x0 * SUPERSAMPLE, y0 * SUPERSAMPLE), head)
        for part in parts:
            if part.z >= FRONT_Z:
                part.draw(draw)
        self.face.draw(img, draw, frame, state, self.head.tone)
        return np.asarray(img.reduce(SUPERSAMPLE))

    def render_sequence(self, motion: np.ndarray) -> np.ndarray:
        """Render every row of a motion array.

        Args:
            motion: (F, NUM_MOTION) float.
        Returns:
            (F, res, res, 3) uint8.
        """
        motion = np.asarray(motion)
        if motion.ndim != 2 or motion.shape[1] != NUM_MOTION:
            raise RenderError(f"motion must have shape (F, {NUM_MOTION}), got {motion.shape}")
        out = np.empty((len(motion), self.res, self.res, 3), np.uint8)
        for i, row in enumerate(motion):
            out[i] = self.render(row)
        return out

    def face_regions(self, pose: np.ndarray, lips_closed: bool = False) -> dict[str, tuple[int, int, int, int]]:
        """Pixel boxes (x0, y0, x1, y1), x1/y1 exclusive, of "mouth", "eye_l" and "eye_r" at this pose (drawn
        with ``lips_closed`` as ``render``'s).

        A box covers the feature's full extent (lips; the open eye, whatever the lids do). A feature that
        faces away (side or back views) gets an empty box (x0 == x1) at its projected position. For a
        one-eyed creature both eye boxes are that eye.
        """
        state, frame = self._place(pose, lips_closed)
        return self.face.regions(frame, state, SUPERSAMPLE, self.res)


def demo_motion(frames: int, seed: int = 0) -> np.ndarray:
    """A varied, smooth test performance touching every channel (talking, blinks, turns, emotions).

    Returns:
        (frames, NUM_MOTION) float32.
    """
    rng = np.random.default_rng(seed)
    t = np.arange(frames, dtype=np.float64)[:, None] / 24.0
    freq = rng.uniform(0.1, 0.6, NUM_MOTION)
    phase = rng.uniform(0, 2 * np.pi, NUM_MOTION)
    wave = np.sin(2 * np.pi * freq * t + phase)  # (frames, NUM_MOTION) in -1..1
    lo = np.array([MOTION_RANGE[n][0] for n in MOTION_INDEX])
    hi = np.array([MOTION_RANGE[n][1] for n in MOTION_INDEX])
    motion = lo + (hi - lo) * (0.5 + 0.5 * wave)
    idx = MOTION_INDEX
    motion[:, idx["jaw_open"]] = np.clip(np.sin(2 * np.pi * 4.0 * t[:, 0]) * 0.6 + 0.3, 0, 1)
    for name in ("head_yaw", "head_pitch", "head_roll"):
        motion[:, idx[name]] *= 0.5
    # Mostly facing front, with the other body views visited now and then.
    views = np.array(list(BODY_VIEWS.values()))
    motion[:, idx["body_yaw"]] = views[(np.arange(frames) // 48) % 4 * ((np.arange(frames) // 48) % 3 == 2)]
    for name in ("blink_l", "blink_r", "emo_happy", "emo_sad", "emo_surprised", "emo_angry"):
        motion[:, idx[name]] = np.clip(motion[:, idx[name]] * 2 - 1, 0, 1)
    return motion.astype(np.float32)


def benchmark(res: int = 128, frames: int = 400, style: str | None = None) -> float:
    """Frames per CPU-second of Renderer.render on one core (all styles in turn when style is None).

    The motion is ``demo_motion`` (talking, blinks, turns, body views); lazy caches such as new body views
    are built inside the timing, only the first frame is rendered before it.
    """
    styles = ALL_STYLES if style is None else (style,)
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    if affinity:
        os.sched_setaffinity(0, {min(affinity)})  # one core, whatever BLAS or PIL would like
    try:
        motion = demo_motion(frames)
        per_style = max(1, frames // len(styles))
        renderers = [Renderer(sample_identity(i, s), res) for i, s in enumerate(styles)]
        for r in renderers:
            r.render(motion[0])  # warm up lazy caches outside the timing
        # CPU time of this (single-core) process: the figure holds on a shared, busy machine too.
        start = time.process_time()
        for k, r in enumerate(renderers):
            for row in motion[k * per_style % frames :][:per_style]:
                r.render(row)
        return per_style * len(renderers) / (time.process_time() - start)
    finally:
        if affinity:
            os.sched_setaffinity(0, affinity)


def contact_sheet(res: int = 128, seeds: tuple[int, ...] = (0, 1)) -> Image.Image:
    """One row per (style, seed): views, mouth/eye channels, head turns and emotions."""
    base = np.zeros(NUM_MOTION, np.float32)

    def with_(**kw) -> np.ndarray:
        p = base.copy()
        for k, v in kw.items():
            p[MOTION_INDEX[k]] = v
        return p

    def emo(name: str) -> np.ndarray:
        p = base.copy()
        p[MOTION_INDEX["emo_happy"] : MOTION_INDEX["emo_happy"] + 4] = emotion_vector(name)
        return p

    poses = [with_(body_yaw=v) for v in BODY_VIEWS.values()] + [
        with_(jaw_open=1.0),
        with_(jaw_open=0.5, mouth_round=1.0),
        with_(mouth_wide=1.0, smile=1.0),
        with_(blink_l=1.0),
        with_(gaze_x=1.0, gaze_y=0.6),
        with_(head_yaw=35.0, head_pitch=15.0),
        with_(head_roll=20.0, head_pitch=-20.0),
        emo("happy"),
        emo("sad"),
        emo("surprised"),
        emo("angry"),
    ]
    rows = [(s, seed) for s in ALL_STYLES for seed in seeds]
    sheet = Image.new("RGB", (res * len(poses), res * len(rows)), (255, 255, 255))
    for j, (style, seed) in enumerate(rows):
        r = Renderer(sample_identity(seed, style), res)
        for i, p in enumerate(poses):
            sheet.paste(Image.fromarray(r.render(p)), (i * res, j * res))
    return sheet


def main(argv: list[str] | None = None) -> int:
    """Benchmark the renderer or write a contact sheet."""
    parser = argparse.ArgumentParser(prog="python -m lpm.world.render", description=__doc__.splitlines()[0])
    parser.add_argument("--bench", action="store_true", help="print frames/s per style on one core")
    parser.add_argument("--res", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--frames", type=int, default=400)
    parser.add_argument("--sheet", help="write a PNG contact sheet of every style here")
    args = parser.parse_args(argv)
    if args.sheet:
        contact_sheet(args.res[0]).save(args.sheet)
        print(f"wrote {args.sheet}")
    if args.bench or not args.sheet:
        for res in args.res:
            for style in ALL_STYLES:
                print(
                    f"res {res:4d}  {style:9s} {benchmark(res, args.frames, style):7.1f} frames/s (one core)"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
