"""lpm: an open, end-to-end video-based character performance model."""

__version__ = "0.1.0"
