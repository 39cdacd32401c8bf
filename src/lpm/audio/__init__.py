"""Audio: frame-aligned log-mel (offline and streaming) and the causal audio encoder."""

from lpm.audio.encoder import PARTNER_STREAM, SELF_STREAM, AudioEncoder
from lpm.audio.mel import LogMel, MelConfig
from lpm.audio.stream import MelStream

__all__ = ["AudioEncoder", "LogMel", "MelConfig", "MelStream", "PARTNER_STREAM", "SELF_STREAM"]
