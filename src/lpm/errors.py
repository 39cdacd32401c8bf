"""The base class of every error lpm reports to a user as a one-line message (no traceback)."""


class LpmError(Exception):
    """A user-facing error: bad input, a missing file, a config or checkpoint that does not fit."""


class MediaError(LpmError):
    """A media file (video, audio or picture) that cannot be read or written."""
