"""The identity embedding: a small CNN whose unit-length output is equal for one character in any pose or view.

Trained contrastively on world renders (supervised contrastive loss, Khosla et al. 2020: images of the same
identity in different poses and body views are positives, every other identity in the batch a negative). Its
verification accuracy on held-out identities (``verification``) is reported beside ``identity_sim``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lpm.eval.probe import conv_stage, frames_to_tensor, head_crop


@dataclass(frozen=True)
class IdentityConfig:
    """Shape of the identity network."""

    res: int = 48  # identity is colours and shapes: a small image is enough and much cheaper
    widths: tuple[int, ...] = (24, 48, 96)  # channels per stride-2 stage
    embed_dim: int = 64
    temperature: float = 0.1  # of the contrastive loss
    # Read the head crop (``probe.HEAD_CROP``) instead of the whole frame: at res 96 a 128 px frame's face keeps
    # its pixels, so a blurred or smeared face no longer looks like the sharp one (the 48 px whole frame hid it).
    crop: bool = False


class IdentityNet(nn.Module):
    """Frame -> unit-length identity embedding."""

    def __init__(self, cfg: IdentityConfig = IdentityConfig()):
        super().__init__()
        self.cfg = cfg
        chans = (3, *cfg.widths)
        self.stages = nn.Sequential(*[conv_stage(a, b) for a, b in zip(chans[:-1], chans[1:])])
        side = cfg.res // 2 ** len(cfg.widths)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(cfg.widths[-1] * side * side, 256), nn.ReLU(True),
                                  nn.Linear(256, cfg.embed_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed frames.

        Args:
            x: (B, 3, H, W) float in [-1, 1].
        Returns:
            (B, embed_dim) unit vectors.
        """
        if self.cfg.crop:
            x = head_crop(x)
        if x.shape[-1] != self.cfg.res or x.shape[-2] != self.cfg.res:
            x = F.interpolate(x, size=(self.cfg.res, self.cfg.res), mode="bilinear", antialias=True,
                              align_corners=False)
        return F.normalize(self.head(self.stages(x)), dim=-1)


def supcon_loss(z: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020, eq. 2, "L_out").

    Args:
        z: (B, D) unit embeddings; labels: (B,) identity ids (each present at least twice).
    """
    sim = z @ z.T / temperature  # (B, B)
    eye = torch.eye(len(z), dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(eye, float("-inf"))
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    pos = (labels[:, None] == labels[None, :]) & ~eye
    return -(log_prob.masked_fill(~pos, 0).sum(1) / pos.sum(1).clamp(min=1)).mean()


@torch.no_grad()
def embed_frames(net: IdentityNet, frames: np.ndarray, batch: int = 256) -> np.ndarray:
    """Embeddings of frames.

    Args:
        frames: (F, H, W, 3) uint8.
    Returns:
        (F, embed_dim) float32 unit vectors.
    """
    net.eval()
    out = [net(frames_to_tensor(frames[i: i + batch])).numpy() for i in range(0, len(frames), batch)]
    return np.concatenate(out) if out else np.zeros((0, net.cfg.embed_dim), np.float32)


@dataclass
class Verification:
    """Same-or-different verification on pairs of frames of held-out identities."""

    split: str
    pairs: int
    eer: float  # equal error rate: false accepts = false rejects at this threshold
    threshold: float  # cosine similarity at the EER
    accuracy: float  # balanced accuracy (mean of same- and different-pair accuracy) at that threshold
    same_mean: float  # mean cosine of same-identity pairs
    diff_mean: float  # mean cosine of different-identity pairs


def verification(embeddings: np.ndarray, identity: np.ndarray, split: str) -> Verification:
    """EER and accuracy over all pairs.

    Args:
        embeddings: (N, D) unit vectors; identity: (N,) labels.
    """
    sim = embeddings @ embeddings.T
    iu = np.triu_indices(len(embeddings), k=1)
    scores = sim[iu]
    same = (identity[:, None] == identity[None, :])[iu]
    pos, neg = np.sort(scores[same]), np.sort(scores[~same])
    # Sweep thresholds: false reject = share of same pairs below, false accept = share of different pairs above.
    thresholds = np.unique(np.quantile(scores, np.linspace(0, 1, 2001)))
    frr = np.searchsorted(pos, thresholds) / max(len(pos), 1)
    far = 1 - np.searchsorted(neg, thresholds) / max(len(neg), 1)
    k = int(np.argmin(np.abs(frr - far)))
    eer = float((frr[k] + far[k]) / 2)
    return Verification(split, int(len(scores)), eer, float(thresholds[k]), 1 - eer,
                        float(pos.mean()), float(neg.mean()))
