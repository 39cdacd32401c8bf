"""Generic restyling of images for training: the same shapes in another look (grey, outlined, contrast, noise).

Nothing here draws a style of the world: an instrument or a codec trained with it learns shapes rather than one
palette, which is what reading (or encoding) an unseen style needs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def style_augment(x: torch.Tensor, prob: float, gen: torch.Generator) -> torch.Tensor:
    """Restyle a random share of images: grey, then (half of them) outlines darkened by their edge strength,
    a random contrast and brightness, and pixel noise. Generic photometric changes (no style of the world is
    drawn), so a reader learns shapes rather than one palette.

    Args:
        x: (B, 3, H, W) in [-1, 1].
    """
    pick = torch.nonzero(torch.rand(x.shape[0], generator=gen) < prob).flatten()
    if not len(pick):
        return x
    n = len(pick)

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, 1, 1, 1, generator=gen)

    g = (0.299 * x[pick, 0] + 0.587 * x[pick, 1] + 0.114 * x[pick, 2])[:, None]  # (n, 1, H, W)
    sobel = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])
    kernels = torch.stack([sobel, sobel.T])[:, None] / 4  # (2, 1, 3, 3)
    edges = F.conv2d(F.pad(g, (1, 1, 1, 1), mode="replicate"), kernels).norm(dim=1, keepdim=True)
    outline = (torch.rand(n, 1, 1, 1, generator=gen) < 0.5).float() * uniform(0.5, 2.0)
    g = uniform(0.5, 1.2) * (g - outline * edges) + uniform(-0.2, 0.3)
    g = g + uniform(0.0, 0.05) * torch.randn(g.shape, generator=gen)
    x = x.clone()
    x[pick] = g.clamp(-1, 1).expand(-1, 3, -1, -1)
    return x
