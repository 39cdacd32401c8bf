"""Labelled render sets for the bench instruments: world identities in known poses, rendered on the fly.

Each identity is rendered in ``per_identity`` poses: half drawn by ``lpm.world.frames.random_poses`` (every
channel over its whole range), half taken from rows of real clip performances (the distribution the bench will
see: small head drift, nods, visemes), when a clip data set is given. Because the renderer is the world's own,
every image comes with its exact rig pose and identity: the probe regresses the pose, the identity embedding
learns that images with the same identity label match.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lpm.eval.face import REGIONS
from lpm.world.frames import random_poses
from lpm.world.identity import ALL_STYLES, TRAIN_STYLES, ZEROSHOT_STYLE, sample_identity
from lpm.world.motion import NUM_MOTION
from lpm.world.render import Renderer
from lpm.world.synth import IDENTITY_SEED_BASE, SPLIT_CODE

# Salt of the render-set RNG, so these identities differ from the VAE frame sets and the clip data sets.
RENDER_SET_SALT = 4242
# Share of poses taken from clip performances (when clip motion is given); the rest are random poses.
CLIP_POSE_SHARE = 0.5


@dataclass
class RenderSet:
    """Frames with their poses and identity labels.

    Attributes:
        frames: (N, H, W, 3) uint8.
        poses: (N, NUM_MOTION) float32, the rig pose of each frame.
        identity: (N,) int64, an identity index within this set (equal index = same character).
        styles: the style of each identity index.
        boxes: (N, 3, 4) int16 or None, the pixel boxes (x0, y0, x1, y1) of "eye_l", "eye_r" and "mouth"
            (``face.REGIONS``) in each frame (``Renderer.face_regions``; x0 == x1 where the feature faces away).
            None in sets saved before they existed.
    """

    frames: np.ndarray
    poses: np.ndarray
    identity: np.ndarray
    styles: list[str]
    boxes: np.ndarray | None = None

    def save(self, path: str | Path) -> None:
        """Write as one npz (atomically)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp.npz")
        extra = {} if self.boxes is None else {"boxes": self.boxes}
        np.savez(tmp, frames=self.frames, poses=self.poses, identity=self.identity, styles=np.array(self.styles),
                 **extra)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | Path) -> RenderSet:
        """Read a set written by ``save``."""
        with np.load(path, allow_pickle=False) as z:
            boxes = z["boxes"] if "boxes" in z.files else None
            return cls(z["frames"], z["poses"], z["identity"], [str(s) for s in z["styles"]], boxes)


def load_clip_motion(data: str | Path | None, split: str = "train") -> np.ndarray | None:
    """All motion rows of one split of a world clip data set, or None when there is none.

    Returns:
        (R, NUM_MOTION) float32 or None.
    """
    if data is None or not (Path(data) / "manifest.jsonl").is_file():
        return None
    from lpm.data.clip import read_manifest

    rows = []
    for row in read_manifest(data, split):
        path = Path(data) / row["path"] / "motion.npz"
        if path.is_file():
            with np.load(path, allow_pickle=False) as z:
                rows.append(z["values"].astype(np.float32))
    return np.concatenate(rows) if rows else None


def _poses(rng: np.random.Generator, n: int, clip_motion: np.ndarray | None) -> np.ndarray:
    poses = random_poses(rng, n)
    if clip_motion is not None:
        take = rng.random(n) < CLIP_POSE_SHARE
        poses[take] = clip_motion[rng.integers(0, len(clip_motion), int(take.sum()))]
    return poses


# Clip motion rows for the worker processes, set once per pool (not pickled with every job).
_worker_clip_motion: np.ndarray | None = None


def _init_worker(clip_motion: np.ndarray | None) -> None:
    global _worker_clip_motion
    _worker_clip_motion = clip_motion
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def _identity_job(args: tuple[str, int, int, int, int, bool]) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    split, seed, i, per_identity, res, all_styles = args
    clip_motion = _worker_clip_motion
    rng = np.random.default_rng([seed, i, SPLIT_CODE[split], RENDER_SET_SALT])
    styles = (ZEROSHOT_STYLE,) if split == "zeroshot" else ALL_STYLES if all_styles else TRAIN_STYLES
    style = styles[i % len(styles)]
    identity = sample_identity(IDENTITY_SEED_BASE[split] + int(rng.integers(0, 9_999_999)), style)
    poses = _poses(rng, per_identity, clip_motion)
    renderer = Renderer(identity, res)
    boxes = np.array([[b[r] for r in REGIONS] for b in map(renderer.face_regions, poses)], np.int16)
    return renderer.render_sequence(poses), poses, boxes, style


def render_set(split: str, identities: int, per_identity: int, res: int = 128, seed: int = 0,
               clip_motion: np.ndarray | None = None, workers: int | None = None,
               all_styles: bool = False) -> RenderSet:
    """Render ``identities`` x ``per_identity`` labelled frames of one split (identities drawn from its seed range).

    ``all_styles``: the identities of a ``train`` or ``val`` set cycle through every style, the zero-shot one
    too (still from the split's seed range, so never a ``zeroshot`` identity); else the seen styles."""
    jobs = [(split, seed, i, per_identity, res, all_styles) for i in range(identities)]
    workers = min(workers or os.cpu_count() or 1, max(1, identities))
    if workers <= 1:
        _init_worker(clip_motion)
        out = [_identity_job(j) for j in jobs]
        _init_worker(None)
    else:
        with mp.get_context("fork").Pool(workers, initializer=_init_worker, initargs=(clip_motion,)) as pool:
            out = pool.map(_identity_job, jobs, chunksize=4)
    frames = np.concatenate([f for f, _, _, _ in out])
    poses = np.concatenate([p for _, p, _, _ in out]).astype(np.float32)
    assert poses.shape[1] == NUM_MOTION
    identity = np.repeat(np.arange(identities), per_identity).astype(np.int64)
    return RenderSet(frames, poses, identity, [s for _, _, _, s in out], np.concatenate([e for _, _, e, _ in out]))


def cached_render_set(cache: str | Path, split: str, identities: int, per_identity: int, res: int = 128,
                      seed: int = 0, clip_motion: np.ndarray | None = None, all_styles: bool = False) -> RenderSet:
    """``render_set``, stored under ``cache`` (one npz per split, size, res, seed and style set) after the first call.

    A cached set from before region boxes existed is rendered again (the same frames, now with their boxes)."""
    path = Path(cache) / f"{split}_{identities}x{per_identity}_r{res}_s{seed}{'_all' if all_styles else ''}.npz"
    if path.is_file():
        cached = RenderSet.load(path)
        if cached.boxes is not None:
            return cached
    out = render_set(split, identities, per_identity, res, seed, clip_motion, all_styles=all_styles)
    out.save(path)
    return out
