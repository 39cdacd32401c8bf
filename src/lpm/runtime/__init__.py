"""Streaming runtime: ``Session`` (one conversation), the ``Engine`` interface and its engines, the pipeline."""

from lpm.runtime.engines import Character, ChunkInput, Engine, EngineError, WorldCharacter
from lpm.runtime.session import Session, SessionConfig
from lpm.runtime.stats import SessionStats

__all__ = ["Character", "ChunkInput", "Engine", "EngineError", "Session", "SessionConfig", "SessionStats",
           "WorldCharacter"]
