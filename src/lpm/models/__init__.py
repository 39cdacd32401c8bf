"""Models: the LPM-style DiT, its attention patterns, KV cache, rotary positions and conditioning encoders."""

from lpm.models.conditioning import Conditioning, References
from lpm.models.dit import DiT, load_dit, save_dit
from lpm.models.dit_config import PRESETS, DiTConfig, preset
from lpm.models.kv_cache import KVCache
from lpm.models.text import ByteTextEncoder, TextEncoder

__all__ = [
    "ByteTextEncoder",
    "Conditioning",
    "DiT",
    "DiTConfig",
    "KVCache",
    "PRESETS",
    "References",
    "TextEncoder",
    "load_dit",
    "preset",
    "save_dit",
]
