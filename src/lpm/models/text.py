"""Text conditioning: the ``TextEncoder`` interface and a byte-level encoder trained with the model.

Wan2.1 conditions on umT5-XXL tokens; we download nothing, so a small transformer over UTF-8 bytes is trained
jointly with the DiT. Anything with ``encode(list[str]) -> (tokens, mask)`` (a frozen T5, a CLIP text tower)
can replace it; the DiT only sees ``(B, L, text_dim)`` tokens and a ``(B, L)`` mask.
"""

from __future__ import annotations

import abc

import torch
from torch import nn

BYTE_VOCAB = 256
BOS, PAD = 256, 257  # BOS is always present, so no caption is ever an empty key set


class TextEncoder(abc.ABC):
    """What the DiT needs from a text encoder."""

    dim: int  # width of the returned tokens

    @abc.abstractmethod
    def encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Args:
            texts: B captions.
        Returns:
            ``tokens (B, L, dim)`` and ``mask (B, L)`` bool (True = a real token).
        """


class ByteTextEncoder(nn.Module, TextEncoder):
    """UTF-8 bytes (+ BOS) -> learned embeddings + positions -> pre-norm transformer -> tokens.

    Args:
        dim: token width.
        num_layers, num_heads: transformer shape.
        max_bytes: bytes kept per caption (longer captions are truncated).
    """

    def __init__(self, dim: int, num_layers: int, num_heads: int, max_bytes: int) -> None:
        super().__init__()
        self.dim = dim
        self.max_bytes = max_bytes
        self.embed = nn.Embedding(BYTE_VOCAB + 2, dim)
        self.pos = nn.Parameter(torch.randn(max_bytes + 1, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(
            dim, num_heads, 4 * dim, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.layers = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Captions -> ``ids (B, L)`` long and ``mask (B, L)`` bool, ``L = 1 + longest caption``."""
        rows = [[BOS, *t.encode("utf-8")[: self.max_bytes]] for t in texts]
        length = max(len(r) for r in rows)
        ids = torch.full((len(rows), length), PAD, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        return ids, ids != PAD

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``ids (B, L)``, ``mask (B, L)`` -> tokens ``(B, L, dim)``."""
        x = self.embed(ids) + self.pos[: ids.shape[1]]
        x = self.layers(x, src_key_padding_mask=~mask)
        return self.norm(x)

    def encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = self.tokenize(texts)
        device = self.pos.device
        ids, mask = ids.to(device), mask.to(device)
        return self.forward(ids, mask), mask
