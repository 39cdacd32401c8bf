"""An adversarial critic on latent frames, for DMD's GAN term (DMD2, Yin et al. 2024, section 4.3).

DMD moves the student toward the teacher's distribution, so it is at most as sharp as the teacher; its regression
anchor (``DmdConfig.regression``) is a squared error, which pulls toward the mean of what the data allows: a soft
face. A critic that tells the world's clean latents from the student's rollouts, given the same reference, pushes
the other way, toward latents the data could have held (DMD2 puts its head on the fake score's features; here it
is a small network of its own, so its cost is nothing beside a DiT forward).

``LatentCritic``: a latent frame ``(N, C, h, w)`` and its window's global reference latent ``(N, C, h, w)``
(concatenated on channels: "is this a frame *of this character*") -> patch logits ``(N, h/2, w/2)``, each seeing
a 7x7-cell field. Spectral norm on every convolution keeps it Lipschitz, so no gradient penalty is needed.

The DMD trainer shows it both sides through the same small noise (instance noise, ``x_t = (1 - t) x + t eps`` with
``t`` drawn in ``[0, gan_noise]`` per frame, ``DmdDistiller._critic_inputs``), which keeps the two distributions
overlapping while the critic is young.

Losses (non-saturating): critic ``softplus(-D(real)) + softplus(D(fake))``; generator ``softplus(-D(fake))``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm


@dataclass(frozen=True)
class CriticConfig:
    latent_channels: int
    width: int = 64


class LatentCritic(nn.Module):
    """(N, C, h, w) frames and references -> (N, h // 2, w // 2) logits (real > 0)."""

    def __init__(self, cfg: CriticConfig):
        super().__init__()
        self.cfg = cfg
        c, w = cfg.latent_channels, cfg.width

        def conv(a: int, b: int, k: int = 3, stride: int = 1) -> nn.Module:
            return spectral_norm(nn.Conv2d(a, b, k, stride=stride, padding=k // 2))

        self.body = nn.Sequential(conv(2 * c, w), nn.LeakyReLU(0.2), conv(w, 2 * w, stride=2), nn.LeakyReLU(0.2),
                                  conv(2 * w, 2 * w), nn.LeakyReLU(0.2), conv(2 * w, 1, k=1))

    def forward(self, frames: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
        if frames.shape != references.shape or frames.shape[1] != self.cfg.latent_channels:
            raise ValueError(f"LatentCritic: frames {tuple(frames.shape)} and references {tuple(references.shape)} "
                             f"must both be (N, {self.cfg.latent_channels}, h, w)")
        return self.body(torch.cat([frames, references], 1)).squeeze(1)


def frames_and_references(video: torch.Tensor, references: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``video (B, F, C, h, w)``, ``references (B, C, h, w)`` -> both as ``(B * F, C, h, w)``, frame-aligned."""
    b, f = video.shape[:2]
    return video.flatten(0, 1), references[:, None].expand(b, f, *references.shape[1:]).flatten(0, 1)


def critic_loss(critic: LatentCritic, real: torch.Tensor, fake: torch.Tensor, references: torch.Tensor
                ) -> tuple[torch.Tensor, float, float]:
    """The critic's loss on ``(N, C, h, w)`` real and (detached) fake frames, and the share of patches it gets
    right on each side (``real_acc``, ``fake_acc``: 0.5 = cannot tell)."""
    d_real, d_fake = critic(real, references), critic(fake.detach(), references)
    loss = F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
    return loss, float((d_real > 0).float().mean()), float((d_fake < 0).float().mean())


def generator_loss(critic: LatentCritic, fake: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """The generator's non-saturating loss ``softplus(-D(fake))``. Its backward also leaves gradients in the
    critic's parameters; the caller drops them before the critic's own step (``DmdDistiller._critic_step``)."""
    return F.softplus(-critic(fake, references)).mean()
