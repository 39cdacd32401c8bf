"""Where the mouth and eyes are, per frame, at the latent resolution: the loss-weight maps of the Base model.

Mouth and eyes are about 1% of the pixels but carry lip sync and blinks (ARCHITECTURE.md, "learnability at
CPU scale"), so the flow-matching loss weights them up. World clips know exactly where they are: the
character's identity (``meta.identity``) rebuilds its renderer, and ``Renderer.face_regions`` gives each
feature's pixel box for each frame's motion row. Clips without motion (real footage) get no map (uniform).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

FACE_FEATURES = ("mouth", "eye_l", "eye_r")
# Where the emotions show besides mouth and eyes: brow raise and knit, cheek colour
# (``lpm.world.render_rig.face_state``).
EXPRESSION_FEATURES = ("brow_l", "brow_r", "cheek_l", "cheek_r")


def face_coverage(meta: dict[str, Any], style: str, motion: torch.Tensor | None, motion_names: tuple[str, ...],
                  height: int, width: int, downsample: int,
                  groups: tuple[tuple[str, ...], ...] = (FACE_FEATURES,)) -> tuple[torch.Tensor, ...] | None:
    """Per group of features (mouth and eyes by default), the fraction of each latent cell covered by their boxes,
    per frame; the face regions are computed once for all groups.

    Args:
        meta: the clip's ``meta.json`` extras (needs ``identity.seed``).
        style: the clip's style.
        motion: ``(F, P)`` ground-truth motion, or None.
        motion_names: the P channel names.
        height, width: frame size in pixels. downsample: the VAE's spatial factor d.
        groups: feature-name groups (``Renderer.face_regions`` keys), one map each.
    Returns:
        one ``(F, H/d, W/d)`` float map in [0, 1] per group, or None when the clip has no motion or no world
        identity.
    """
    identity = meta.get("identity")
    if motion is None or not isinstance(identity, dict) or "seed" not in identity or height != width:
        return None
    from lpm.world.identity import sample_identity
    from lpm.world.motion import MOTION_INDEX, NUM_MOTION
    from lpm.world.render import Renderer

    try:
        renderer = Renderer(sample_identity(int(identity["seed"]), style), height)
    except ValueError:  # an unknown style or a resolution the renderer does not draw: no map
        return None
    rows = np.zeros((motion.shape[0], NUM_MOTION), np.float64)
    for j, name in enumerate(motion_names):
        if name in MOTION_INDEX:
            rows[:, MOTION_INDEX[name]] = motion[:, j].numpy()
    mask = np.zeros((len(groups), motion.shape[0], height, width), np.float32)
    for f, row in enumerate(rows):
        for name, (x0, y0, x1, y1) in renderer.face_regions(row).items():
            for g, features in enumerate(groups):
                if name in features:
                    mask[g, f, max(0, y0):max(0, y1), max(0, x0):max(0, x1)] = 1.0
    pooled = F.avg_pool2d(torch.from_numpy(mask).flatten(0, 1)[:, None], downsample)[:, 0]  # (G*F, H/d, W/d)
    return tuple(pooled.unflatten(0, mask.shape[:2]))


def loss_weights(coverage: torch.Tensor | None, face_weight: float, shape: tuple[int, ...],
                 mouth: torch.Tensor | None = None, mouth_weight: float = 0.0,
                 expression: torch.Tensor | None = None, expression_weight: float = 0.0) -> torch.Tensor:
    """Per-position loss weights ``1 + face_weight * coverage + mouth_weight * mouth + expression_weight *
    expression`` (ones where there is no map).

    The mouth alone is ~2.5 % of latent cells and the only region audio can explain, so it gets its own weight
    (ARCHITECTURE.md, "Learnability"); the brows and cheeks carry the emotions a caption asks for
    (``EXPRESSION_FEATURES``).

    Args:
        coverage: ``(F, h, w)`` mouth-and-eyes coverage, or None. shape: ``(F, h, w)`` of the weights to return.
        mouth: ``(F, h, w)`` mouth-only coverage, or None.
        expression: ``(F, h, w)`` brows-and-cheeks coverage, or None.
    """
    w = torch.ones(shape) if coverage is None else 1.0 + face_weight * coverage.float()
    if mouth is not None and mouth_weight:
        w = w + mouth_weight * mouth.float()
    if expression is not None and expression_weight:
        w = w + expression_weight * expression.float()
    return w
