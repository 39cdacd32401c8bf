"""``Restorer``: puts the reference's detail back into decoded frames, after the VAE.

The VAE draws the mouth and eyes 11 dB worse than the frame (18.8 against 30.3 dB PSNR on held-out identities,
docs/learning.md "The VAE's ceiling on the face"): a 4-pixel iris or a glasses frame does not survive a 16x16x8
latent, whoever made the latent. The DiT's latents are softer still. The character's global reference image holds
that detail in pixels, and every session has it. The restorer reads the decoded frame beside the reference and
returns the frame plus a residual:

    restored = clamp(frame + U(frame, reference), -1, 1)          frame, reference: (N, 3, H, W) in [-1, 1]

``U`` is a small U-Net (2x2 pixel-unshuffle stem, residual blocks at 1/2, 1/4 and 1/8 resolution, skips added,
sub-pixel head) whose last convolution starts at zero: an untrained restorer returns its input unchanged. It is
trained on the world (``lpm train restorer``) to map VAE decodes of true frames, clean and with softened latents,
back to the true frames, the mouth and eyes weighted up. It works after any DiT on the same VAE, so no DiT stage is
retrained; per frame it costs about a sixth of the tiny VAE's decode (4 ms against 22 ms on this CPU).

Which image it reads beside the frame is part of its config (``RestorerConfig.reference``): the global reference,
or (``"expression"``) the character's facial-expression exemplar of the emotion the model's own motion track carries
(``lpm.models.expression.expression_kind``). The DiT draws
the caption's emotion faintly (text emotion 0.38 against the rig's 0.76, docs/learning.md) although its track
carries it; the exemplar holds this character's brows, cheeks and lids for that emotion in pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from lpm.config import from_dict, to_dict
from lpm.errors import LpmError
from lpm.models.expression import GLOBAL
from lpm.models.vae import Down, ResBlock, Up
from lpm.training.checkpoint import load_checkpoint, load_into, save_checkpoint

CHECKPOINT_KIND = "restorer"
REFERENCES = (GLOBAL, "expression")  # what ``RestorerConfig.reference`` may name


@dataclass(frozen=True)
class RestorerConfig:
    """Shape of the restorer; stored as the checkpoint's config."""

    channels: tuple[int, ...] = (16, 32, 64)  # widths at 1/2, 1/4, 1/8 resolution
    blocks: int = 2  # residual blocks at the coarsest level (one at each finer level, each way)
    norm_groups: int = 8
    resolution: int = 128  # the frame size it was trained at (square)
    # > 0: at 1/4 resolution each frame position also attends to the reference's features in a window of this many
    # positions a side around it (``WindowAttention``): a lookup of the reference's detail where the head moved.
    attention_window: int = 0
    # The image read beside the frame: "global" (the global reference) or "expression" (the exemplar of the
    # emotion the motion track carries, ``expression_kind``; the global image when there is none).
    reference: str = GLOBAL

    def __post_init__(self) -> None:
        if self.reference not in REFERENCES:
            raise LpmError(f"restorer reference must be one of {', '.join(REFERENCES)}, got {self.reference!r}")
        if not self.channels or any(c % self.norm_groups for c in self.channels):
            raise LpmError(f"restorer widths {self.channels} must be non-empty and divisible by norm_groups="
                           f"{self.norm_groups}")
        if self.blocks < 1:
            raise LpmError(f"restorer blocks must be >= 1, got {self.blocks}")
        if self.attention_window < 0 or (self.attention_window and (self.attention_window % 2 == 0
                                                                    or len(self.channels) < 2)):
            raise LpmError(f"restorer attention_window must be 0 or odd, with at least 2 levels; got "
                           f"{self.attention_window} with {len(self.channels)} levels")


class WindowAttention(nn.Module):
    """Each position of ``x (N, D, h, w)`` attends to ``ref (N or 1, D, h, w)`` in a ``k x k`` window around the
    same position (zero padded, padding masked out); returns ``x`` plus the projected result."""

    def __init__(self, dim: int, window: int, groups: int):
        super().__init__()
        self.window, self.scale = window, dim ** -0.5
        self.norm_x, self.norm_ref = nn.GroupNorm(groups, dim), nn.GroupNorm(groups, dim)
        self.q, self.k, self.v = nn.Conv2d(dim, dim, 1), nn.Conv2d(dim, dim, 1), nn.Conv2d(dim, dim, 1)
        self.out = nn.Conv2d(dim, dim, 1)
        nn.init.zeros_(self.out.weight)  # starts as no lookup: added to a trained restorer, it changes nothing
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        n, d, h, w = x.shape
        k2, pad = self.window ** 2, self.window // 2
        r = self.norm_ref(ref)
        q = self.q(self.norm_x(x)).reshape(n, d, 1, h * w)
        keys = F.unfold(self.k(r), self.window, padding=pad).reshape(r.shape[0], d, k2, h * w)
        values = F.unfold(self.v(r), self.window, padding=pad).reshape(r.shape[0], d, k2, h * w)
        inside = F.unfold(torch.ones(1, 1, h, w, device=x.device, dtype=x.dtype), self.window, padding=pad) > 0
        logits = (q * keys).sum(1) * self.scale  # (N, k2, hw)
        weights = logits.masked_fill(~inside, float("-inf")).softmax(1)
        out = (weights[:, None] * values).sum(2).reshape(n, d, h, w)
        return x + self.out(out)


class Restorer(nn.Module):
    """``(frame, reference) -> restored frame`` (see the module docstring)."""

    def __init__(self, cfg: RestorerConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or RestorerConfig()
        ch, g = cfg.channels, cfg.norm_groups
        self.stem = nn.Conv2d(2 * 3 * 4, ch[0], 3, padding=1)  # frame and reference, 2x2-unshuffled
        self.down_blocks = nn.ModuleList(ResBlock(c, c, g) for c in ch[:-1])
        self.downs = nn.ModuleList(Down(ch[i], ch[i + 1]) for i in range(len(ch) - 1))
        self.middle = nn.Sequential(*(ResBlock(ch[-1], ch[-1], g) for _ in range(cfg.blocks)))
        self.ups = nn.ModuleList(Up(ch[i + 1], ch[i]) for i in reversed(range(len(ch) - 1)))
        self.up_blocks = nn.ModuleList(ResBlock(ch[i], ch[i], g) for i in reversed(range(len(ch) - 1)))
        self.head = nn.Sequential(nn.GroupNorm(g, ch[0]), nn.SiLU(), nn.Conv2d(ch[0], 3 * 4, 3, padding=1))
        self.attention = None
        if cfg.attention_window:  # the reference's own features at 1/4 resolution, looked up by the frame's
            self.reference_encoder = nn.Sequential(nn.Conv2d(3 * 4, ch[0], 3, padding=1), ResBlock(ch[0], ch[0], g),
                                                   Down(ch[0], ch[1]), ResBlock(ch[1], ch[1], g))
            self.attention = WindowAttention(ch[1], cfg.attention_window, g)
        nn.init.zeros_(self.head[-1].weight)  # starts as the identity
        nn.init.zeros_(self.head[-1].bias)

    @property
    def multiple(self) -> int:
        """Frame sides must be multiples of this."""
        return 2 ** len(self.cfg.channels)

    def forward(self, frame: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """``frame (N, 3, H, W)``, ``reference (N, 3, H, W)`` or ``(1, 3, H, W)`` (one for all), in [-1, 1]
        -> ``(N, 3, H, W)`` in [-1, 1]."""
        if frame.dim() != 4 or frame.shape[1] != 3:
            raise LpmError(f"restorer: frames must be (N, 3, H, W), got {tuple(frame.shape)}")
        n, _, h, w = frame.shape
        if h % self.multiple or w % self.multiple:
            raise LpmError(f"restorer: frame size {h}x{w} is not a multiple of {self.multiple}")
        if reference.dim() != 4 or reference.shape[1:] != frame.shape[1:] or reference.shape[0] not in (1, n):
            raise LpmError(f"restorer: the reference must be (1 or {n}, 3, {h}, {w}) like the frames, got "
                           f"{tuple(reference.shape)}")
        x = torch.cat([frame, reference.to(frame).expand(n, -1, -1, -1)], 1)
        h_ = self.stem(F.pixel_unshuffle(x, 2))
        skips = []
        for i, (block, down) in enumerate(zip(self.down_blocks, self.downs)):
            h_ = block(h_)
            skips.append(h_)
            h_ = down(h_)
            if i == 0 and self.attention is not None:
                ref = self.reference_encoder(F.pixel_unshuffle(reference.to(frame), 2))  # (1 or N, c1, H/4, W/4)
                h_ = self.attention(h_, ref)
        h_ = self.middle(h_)
        for up, block in zip(self.ups, self.up_blocks):
            h_ = block(up(h_) + skips.pop())
        return (frame + F.pixel_shuffle(self.head(h_), 2)).clamp(-1, 1)

    def save(self, path: str | Path, extra: dict | None = None) -> Path:
        """Weights + ``RestorerConfig`` in one safetensors file (kind ``restorer``)."""
        return save_checkpoint(path, self.state_dict(), to_dict(self.cfg), kind=CHECKPOINT_KIND, extra=extra)


def load_restorer(path: str | Path, device: str | torch.device = "cpu") -> Restorer:
    """A restorer from ``Restorer.save``'s file, in eval mode (a clear error for another kind of file)."""
    if not Path(path).is_file():
        raise LpmError(f"restorer {path}: no such file (train one with `lpm train restorer`)")
    state, meta = load_checkpoint(path, kind=CHECKPOINT_KIND)
    model = Restorer(from_dict(RestorerConfig, meta["config"]))
    load_into(model, state, source=str(path))
    return model.to(device).eval().requires_grad_(False)
