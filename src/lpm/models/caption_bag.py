"""Captions as a bag of hashed words: the speech network's view of the text control.

The speech network (``lpm.models.motion_track.SpeechMotion``) predicts the motion track the DiT renders. What the
caption asks for (an emotion and its strength: "very happy", "slightly sad") sets channels no voice carries: the
``emo_*`` channels and the smile and brow baselines. Measured on the bench (docs/learning.md, "What the world-FID
measures"): the rig rendering the audio-predicted track scored world-FID 139; with the caption's emotion in the
track, 50.

A bag of words is enough for captions that name a mood in a word or two, it is the same on every machine
(CRC-32, not Python's salted ``hash``), and it keeps the speech network independent of the DiT's text encoder,
which trains with the DiT. An empty caption (text dropout, no text control) is the zero vector.
"""

from __future__ import annotations

import re
import zlib

import torch

WORD = re.compile(r"[a-z]+")


def caption_words(caption: str) -> list[str]:
    """Lower-case alphabetic words of ``caption``."""
    return WORD.findall(caption.lower())


def caption_bag(captions: list[str], buckets: int) -> torch.Tensor:
    """``captions`` -> ``(B, buckets)`` float32 multi-hot: bucket ``crc32(word) % buckets`` of each word is 1."""
    if buckets < 1:
        raise ValueError(f"buckets must be >= 1, got {buckets}")
    out = torch.zeros(len(captions), buckets)
    for i, caption in enumerate(captions):
        if not isinstance(caption, str):
            raise TypeError(f"caption {i} is a {type(caption).__name__}, expected str")
        for word in caption_words(caption):
            out[i, zlib.crc32(word.encode()) % buckets] = 1.0
    return out
