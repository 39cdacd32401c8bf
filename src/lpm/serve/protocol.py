"""The WebSocket wire protocol of ``/v1/session`` (documented in README.md, "Live sessions"; keep it stable).

Client -> server
- JSON ``{"type": "start", "character": "anime:42" | "reference": "<base64 PNG/JPEG>", "refs": {kind: b64},
  "text": "...", "sample_rate": 16000, "voice": "en-us+m3", "frame": true}``: first message; opens the session.
  Reference images are cropped to the world's framing around the face unless ``frame`` is false.
- JSON ``{"type": "text", "text": "..."}``: the text control (next chunk boundary).
- JSON ``{"type": "say", "text": "..."}``: espeak-ng speaks it as the character's own voice.
- JSON ``{"type": "interrupt"}``: drop the character's queued speech (after a ``barge_in``).
- JSON ``{"type": "stop"}``: end the session.
- binary: one tag byte (``0x01`` own speech, ``0x02`` partner) then PCM16 little-endian mono at the start
  message's ``sample_rate``.

Server -> client
- binary: ``0x10``, a little-endian float64 media timestamp (seconds), then one JPEG frame.
- binary: ``0x11``, a float64 media timestamp where the speech starts, then PCM16 LE mono 16 kHz: the
  character's own voice produced by ``say`` / ``POST /v1/speak``, to be played when that frame is shown.
- JSON ``ready`` (session id, engine, fps, resolution, ``framing``: how each reference was cropped, ...),
  ``stats``, ``barge_in``, ``error`` (``message``).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
import struct
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from lpm.errors import LpmError, MediaError
from lpm.media.image import read_picture
from lpm.runtime.audio_buffer import float_to_pcm16, pcm16_to_float
from lpm.runtime.engines import Character, EngineError, WorldCharacter
from lpm.world.speech import SELF_VOICES, Voice

PROTOCOL_VERSION = 1
TAG_SELF_AUDIO = 0x01
TAG_PARTNER_AUDIO = 0x02
TAG_FRAME = 0x10
TAG_SPEECH = 0x11  # server -> client: the character's own speech (from ``say``) to play with the frames
FRAME_HEADER = struct.Struct("<Bd")  # tag, media timestamp (s)
CLIENT_TYPES = ("start", "text", "say", "interrupt", "stop")
IMAGE_FORMATS = ("PNG", "JPEG")
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 8000, 96000
_DATA_URL = re.compile(r"^data:image/[a-z]+;base64,", re.IGNORECASE)


class ProtocolError(LpmError):
    """A malformed or refused client message; answered with an ``error`` message, the session lives on."""


@dataclass
class Limits:
    """What one client may send (every limit is checked before the work it bounds)."""

    max_message_bytes: int = 16 * 2**20  # any single WebSocket message (a start with base64 references)
    max_audio_bytes: int = 2 * 2**20  # one binary audio message (~65 s of 16 kHz PCM16)
    max_image_bytes: int = 8 * 2**20  # one decoded reference image file
    max_image_pixels: int = 4096 * 4096  # width * height, read from the header before decoding (no bombs)
    max_refs: int = 12  # extra references in ``refs``
    max_text_chars: int = 2000  # text control and ``say`` text
    idle_timeout_s: float = 120.0  # a session with no client message for this long is closed


@dataclass
class StartRequest:
    """A parsed ``start`` message."""

    character: Character
    text: str = ""
    sample_rate: int = 16000
    voice: Voice = field(default_factory=Voice)
    frame: bool = True  # crop reference images to the world's framing around the face (lpm.media.framing)


def parse_json(text: str, limits: Limits) -> dict:
    """A client text message -> a dict with a known ``type``; ProtocolError otherwise."""
    if len(text) > limits.max_message_bytes:
        raise ProtocolError(f"message of {len(text)} bytes exceeds {limits.max_message_bytes}")
    try:
        msg = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise ProtocolError(f"malformed JSON: {e}") from None
    if not isinstance(msg, dict) or msg.get("type") not in CLIENT_TYPES:
        raise ProtocolError(f"a message must be a JSON object with type in {', '.join(CLIENT_TYPES)}")
    return msg


def text_field(msg: dict, name: str, limits: Limits, required: bool = False) -> str:
    value = msg.get(name, "")
    if not isinstance(value, str) or (required and not value.strip()):
        raise ProtocolError(f"{msg.get('type')}: '{name}' must be a {'non-empty ' if required else ''}string")
    if len(value) > limits.max_text_chars:
        raise ProtocolError(f"{msg.get('type')}: '{name}' longer than {limits.max_text_chars} characters")
    return value


def decode_image(data: str, limits: Limits) -> np.ndarray:
    """A base64 PNG or JPEG (optionally a ``data:`` URL) -> ``(H, W, 3)`` uint8, within the limits.

    Decoded by ``lpm.media.image.read_picture``: EXIF orientation applied, transparency on white, the size
    checked from the header before any pixel is decoded.
    """
    if not isinstance(data, str):
        raise ProtocolError("an image must be a base64 string")
    data = _DATA_URL.sub("", data.strip())
    if len(data) * 3 // 4 > limits.max_image_bytes:
        raise ProtocolError(f"image larger than {limits.max_image_bytes} bytes")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError("image is not valid base64") from None
    try:
        return read_picture(raw, "image", max_pixels=limits.max_image_pixels, formats=IMAGE_FORMATS).image
    except MediaError as e:
        raise ProtocolError(f"{e} (a PNG or JPEG of at most {limits.max_image_pixels} pixels)") from None


def parse_voice(spec: str | None, character: Character | None = None) -> Voice:
    """``language[+variant]`` (espeak names, e.g. ``en-gb+f3``) -> Voice; default: a world character's own."""
    if not spec:
        if character is not None and character.world is not None:
            return SELF_VOICES[character.world.seed % len(SELF_VOICES)]
        return Voice()
    if not isinstance(spec, str) or not re.fullmatch(r"[a-z]{2,3}(-[a-z]{2,4})?(\+[a-z0-9]{1,8})?", spec.lower()):
        raise ProtocolError(f"voice must look like 'en-us' or 'en-us+f2', got {spec!r}")
    language, _, variant = spec.lower().partition("+")
    return Voice(language=language, variant=variant)


def parse_start(msg: dict, limits: Limits) -> StartRequest:
    """Validate a ``start`` message: a world character id or a reference image, optional extras."""
    ref = msg.get("character") or msg.get("reference")
    if not isinstance(ref, str) or not ref:
        raise ProtocolError("start: give 'character' (a world id like 'anime:42') or 'reference' (base64 image)")
    try:
        world = WorldCharacter.parse(ref) if len(ref) < 64 else None
    except EngineError as e:
        raise ProtocolError(f"start: {e}") from None
    character = Character(world=world)
    if world is None:
        character.images["global"] = decode_image(ref, limits)
    refs = msg.get("refs") or {}
    if not isinstance(refs, dict) or len(refs) > limits.max_refs:
        raise ProtocolError(f"start: 'refs' must be an object of at most {limits.max_refs} kind -> image")
    for kind, data in refs.items():
        if not isinstance(kind, str) or not re.fullmatch(r"(global|body_[a-z]+|expr_[a-z]+)", kind):
            raise ProtocolError(f"start: bad reference kind {kind!r} (global, body_<view>, expr_<name>)")
        character.images[kind] = decode_image(data, limits)
    rate = msg.get("sample_rate", 16000)
    if not isinstance(rate, int) or isinstance(rate, bool) or not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise ProtocolError(f"start: sample_rate must be an integer in [{MIN_SAMPLE_RATE}, {MAX_SAMPLE_RATE}]")
    frame = msg.get("frame", True)
    if not isinstance(frame, bool):
        raise ProtocolError("start: 'frame' must be true or false")
    return StartRequest(character, text_field(msg, "text", limits), rate, parse_voice(msg.get("voice"), character),
                        frame)


def parse_audio(data: bytes, limits: Limits) -> tuple[int, np.ndarray]:
    """A binary client message -> (tag, ``(n,)`` float32 PCM)."""
    if len(data) > limits.max_audio_bytes:
        raise ProtocolError(f"audio message of {len(data)} bytes exceeds {limits.max_audio_bytes}")
    if not data or data[0] not in (TAG_SELF_AUDIO, TAG_PARTNER_AUDIO):
        raise ProtocolError("binary messages start with a tag byte: 0x01 own speech, 0x02 partner")
    try:
        return data[0], pcm16_to_float(data[1:])
    except ValueError as e:
        raise ProtocolError(str(e)) from None


def encode_frame(timestamp_s: float, jpeg: bytes) -> bytes:
    """A server frame message: ``0x10``, float64 LE timestamp, JPEG bytes."""
    return FRAME_HEADER.pack(TAG_FRAME, timestamp_s) + jpeg


def encode_speech(start_s: float, pcm: np.ndarray) -> bytes:
    """A server speech message: ``0x11``, float64 LE media start time, PCM16 LE mono at 16 kHz."""
    return FRAME_HEADER.pack(TAG_SPEECH, start_s) + float_to_pcm16(pcm)


def decode_frame(data: bytes) -> tuple[float, bytes]:
    """Inverse of ``encode_frame`` (for clients and tests)."""
    tag, ts = FRAME_HEADER.unpack_from(data)
    if tag != TAG_FRAME:
        raise ProtocolError(f"not a frame message (tag {tag:#x})")
    return ts, data[FRAME_HEADER.size:]


def jpeg_bytes(image: np.ndarray, quality: int = 85) -> bytes:
    """``(H, W, 3)`` uint8 -> JPEG bytes."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
