"""``DiTConfig``: the one schema of the LPM-style DiT, and its size presets as plain functions.

Everything the network, the KV cache and the streaming session need (tokens per frame, chunk and cache sizes,
audio windows, reference time offsets) is derived here from the fields below, never hard-coded elsewhere.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

from lpm.audio.mel import MelConfig
from lpm.config import ConfigError
from lpm.models.expression import emotion_channels
from lpm.models.motion_track import TRACK_SCALE, speech_history
from lpm.models.reactions import REACTION_KINDS
from lpm.models.reference_warp import pose_channels

ATTENTION_MODES = ("bidirectional", "block_causal")
AUDIO_ATTENTION_MODES = ("separate", "joint")


@dataclass
class DiTConfig:
    # --- latent video: a per-frame VAE with 8x spatial compression; latents are (B, F, C, h, w) ---
    latent_channels: int = 8  # C; must equal the VAE's latent channels (checked at checkpoint load)
    latent_height: int = 16  # h = H / 8 (128 px)
    latent_width: int = 16  # w = W / 8
    patch_size: int = 2  # p: video tokens and the global reference are p x p latent patches
    reference_patch_size: int = 4  # coarser patches for body views and expressions, bounding the token count
    # --- transformer (Wan2.1 block: self-attn -> cross-attn -> MLP, adaLN on the flow time) ---
    dim: int = 256  # D, token width
    num_blocks: int = 8  # transformer blocks
    num_heads: int = 4  # attention heads; head_dim = D / heads, split (t, h, w) for 3D RoPE
    ffn_dim: int = 1024  # MLP hidden width
    qk_norm: bool = True  # RMSNorm on queries and keys (Wan2.1), stabilises bf16 attention
    eps: float = 1e-6  # norm epsilon
    rope_theta: float = 10000.0  # RoPE base
    time_freq_dim: int = 256  # sinusoidal features of the flow time before the time MLP
    reference_time: float = 0.0  # flow time t references are embedded at (t = 0 is clean data, t = 1 noise)
    # The global reference's latent also added to every frame's tokens at the same patch position (as an
    # image-to-video model concatenates its first frame channel-wise): the world's global reference is framed like
    # the video, so each token sees the reference's pixels under it without routing them through attention.
    reference_concat: bool = False
    # The output is the global reference's latent plus what the head predicts (x0 parametrisation only): the model
    # starts as the still reference and learns what moves (mouth, eyes, head), so an identity it never saw is drawn
    # from its reference instead of from memory. A fresh head makes the fine-tune of a model without it start as
    # the still image (``lpm distill ode reference_residual=true``).
    reference_residual: bool = False
    # The reference that residual adds, moved to each frame's head pose by the track's head yaw/pitch/roll (an
    # affine warp linear in the pose, zero at init, blended per latent cell: lpm.models.reference_warp).
    reference_warp: bool = False
    # The frame-aligned reference (the ``reference_concat`` input and the ``reference_residual`` base) is, per frame,
    # the expression exemplar ``expr_<name>`` of the track's strongest emotion channel when it reaches
    # ``lpm.models.expression.EXPRESSION_FLOOR`` and the references hold it, else the global reference: the drawing
    # starts from this character's face in the caption's emotion (``DiT.canvas``).
    expression_canvas: bool = False
    # With ``expression_canvas``: the frame's canvas is the global reference moved toward that exemplar by the
    # emotion's strength, ``global + s * (exemplar - global)`` (s the channel's value in 0..1; the world draws its
    # exemplars at 1 and its clips at 0.34-0.99), instead of the exemplar itself: a "slightly happy" frame starts
    # from a face a little happy, and an unseen style has less of the exemplar to undo.
    expression_blend: bool = False
    # Idle head motion sampled per character and added to the track predicted from audio (lpm.models.idle_motion):
    # the held pose and sway that are not in the audio; calibrated on true tracks (lpm export --idle-motion).
    idle_motion: bool = False
    # --- text: a byte-level encoder trained with the model (no downloads) ---
    text_dim: int = 128  # width of the text encoder's tokens (projected to D inside the DiT)
    text_layers: int = 2  # transformer layers of the byte encoder
    text_heads: int = 4  # heads of the byte encoder
    text_max_bytes: int = 128  # UTF-8 bytes kept per caption (a BOS token is added)
    # --- audio: log-mel of own and partner speech, one causal encoder with a stream embedding ---
    mel: MelConfig = field(default_factory=lambda: MelConfig(n_mels=40))  # feature extraction
    audio_dim: int = 128  # Da, audio token width
    audio_layers: int = 3  # causal conv blocks in the audio encoder
    audio_kernel_steps: int = 5  # conv kernel in mel steps
    audio_tokens_per_frame: int = 2  # A, audio tokens per video frame
    self_audio_before_frames: int = 3  # own-speech window: frames before the query frame (even blocks)
    self_audio_lookahead_frames: int = 1  # own-speech window: frames after (the only non-causal input)
    partner_audio_before_frames: int = 16  # partner-speech window, past-leaning (odd blocks)
    partner_audio_after_frames: int = 0  # partner-speech window after the query frame
    # How a frame's cross-attention weighs caption and audio tokens: "separate" softmaxes, summed (audio gets its
    # own unit of attention whatever the caption's length), or "joint": one softmax over [caption | audio], where
    # ~129 caption tokens starved 10 audio tokens (the stop-9/10 models put 0.01-0.13 % of their attention on audio
    # and ignored it). Checkpoints saved before this key existed are "joint" (``stored_dit_config``).
    audio_attention: str = "separate"
    # --- pose: optional per-frame control (head yaw, pitch, roll, body yaw in degrees) ---
    pose_dim: int = 4  # channels of the pose track
    pose_dropout: float = 0.3  # probability a training sample is seen without its pose track
    # --- motion track (lpm.models.motion_track): audio -> per-frame face/head motion -> adaLN and tokens ---
    # Channels of the track (lpm.world.motion names); () = no track (checkpoints saved before it existed).
    motion_channels: tuple[str, ...] = ()
    motion_dropout: float = 0.1  # probability a training sample is seen without its track (an exact zero)
    # Also add the track per token position (a learned (tokens_per_frame, P, D) map, zero at init): a direct path
    # from jaw_open to the mouth's tokens. False in checkpoints saved before it existed.
    motion_spatial: bool = False
    speech_dim: int = 128  # width of the speech -> motion network
    speech_dilations: tuple[int, ...] = (1, 2, 4, 8)  # its causal blocks (kernel 3): 2 * sum = 30 frames of history
    # Words of the caption the speech network reads (lpm.models.caption_bag: hashed into this many buckets) to set
    # the channels the text control drives (emo_*, smile and brow baselines); 0 = audio only (checkpoints saved
    # before it existed).
    speech_caption_buckets: int = 0
    # Listening reactions fired as whole events by the speech network (lpm.models.reactions); () = none.
    reaction_kinds: tuple[str, ...] = ()
    reaction_frames: int = 48  # length of a reaction's template, frames (a smile holds ~1.8 s)
    reaction_window: int = 10  # frames of onset probability summed to fire a reaction (the spread of its delay)
    # --- references: VAE latents of the global image, body views and expression exemplars ---
    body_views: tuple[str, ...] = ("front", "left", "right", "back")  # kinds "body_<view>"
    expressions: tuple[str, ...] = ("neutral", "happy", "sad", "surprised", "angry")  # kinds "expr_<name>"
    reference_time_gap: int = 8  # RoPE time between reference types; > the number of sub-types of any type
    # --- latent frame rate: a DiT "frame" (chunk, audio windows, RoPE time, motion track) is a latent frame ---
    t_down: int = 1  # video frames per latent frame: the codec's temporal compression (1 per-frame VAE, 4 as Wan)
    # --- streaming (Online model) ---
    attention: str = "bidirectional"  # default mask: "bidirectional" (Base) or "block_causal" (Online)
    frames_per_chunk: int = 4  # latent frames per chunk (the Online model's unit of generation)
    sink_chunks: int = 1  # S: first chunks kept forever as attention sinks
    window_chunks: int = 3  # W: most recent chunks kept in the rolling window

    def __post_init__(self) -> None:
        if self.attention not in ATTENTION_MODES:
            raise ConfigError(f"attention must be one of {ATTENTION_MODES}, got {self.attention!r}")
        if self.audio_attention not in AUDIO_ATTENTION_MODES:
            raise ConfigError(f"audio_attention must be one of {AUDIO_ATTENTION_MODES}, got {self.audio_attention!r}")
        if self.dim % self.num_heads:
            raise ConfigError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
        for name, size in (("latent_height", self.latent_height), ("latent_width", self.latent_width)):
            if size % self.reference_patch_size or size % self.patch_size:
                raise ConfigError(f"{name} {size} is not divisible by the patch sizes")
        if self.reference_patch_size % self.patch_size:
            raise ConfigError("reference_patch_size must be a multiple of patch_size")
        if self.reference_time_gap <= max(len(self.body_views), len(self.expressions)):
            raise ConfigError("reference_time_gap must exceed the number of body views and of expressions")
        if self.t_down < 1:
            raise ConfigError(f"t_down must be >= 1, got {self.t_down}")
        if self.mel_steps_per_frame % self.audio_tokens_per_frame:
            raise ConfigError(f"mel steps per latent frame ({self.mel.steps_per_frame} x t_down {self.t_down}) must be "
                              f"divisible by audio_tokens_per_frame {self.audio_tokens_per_frame}")
        if self.speech_caption_buckets < 0:
            raise ConfigError(f"speech_caption_buckets must be >= 0, got {self.speech_caption_buckets}")
        if self.expression_canvas and not (self.reference_concat or self.reference_residual):
            raise ConfigError("expression_canvas chooses the frame-aligned reference: it needs reference_concat or "
                              "reference_residual")
        if self.expression_blend and not self.expression_canvas:
            raise ConfigError("expression_blend sets how expression_canvas draws: it needs expression_canvas")
        if self.expression_canvas and not emotion_channels(self.motion_channels):
            raise ConfigError("expression_canvas reads the track's emo_<name> channels: motion_channels has none")
        if not 0 <= self.motion_dropout <= 1:
            raise ConfigError(f"motion_dropout must be in [0, 1], got {self.motion_dropout}")
        unknown = [c for c in self.motion_channels if c not in TRACK_SCALE]
        if unknown:
            raise ConfigError(f"unknown motion_channels {unknown}; known: {', '.join(TRACK_SCALE)}")
        if self.sink_chunks < 0 or self.window_chunks < 1:
            raise ConfigError("sink_chunks must be >= 0 and window_chunks >= 1")
        unknown = [k for k in self.reaction_kinds if k not in REACTION_KINDS]
        if unknown:
            raise ConfigError(f"unknown reaction_kinds {unknown}; known: {', '.join(REACTION_KINDS)}")
        if self.reference_warp and not self.reference_residual:
            raise ConfigError("reference_warp moves the reference that reference_residual adds: set both")
        if self.idle_motion and not self.reference_residual:
            raise ConfigError("idle_motion draws a character's idle pattern from its global reference: it needs "
                              "reference_residual")
        for option in ("reference_warp", "idle_motion"):  # both move the track's head pose
            if getattr(self, option):
                try:
                    pose_channels(self.motion_channels, option)
                except ValueError as e:
                    raise ConfigError(str(e)) from None
        if self.reaction_frames < 1 or self.reaction_window < 1:
            raise ConfigError(f"reaction_frames and reaction_window must be >= 1, got {self.reaction_frames}, "
                              f"{self.reaction_window}")

    # ---- derived sizes ----
    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def patch_grid(self) -> tuple[int, int]:
        """(rows, cols) of video patches per frame."""
        return self.latent_height // self.patch_size, self.latent_width // self.patch_size

    @property
    def tokens_per_frame(self) -> int:
        rows, cols = self.patch_grid
        return rows * cols

    @property
    def tokens_per_chunk(self) -> int:
        return self.tokens_per_frame * self.frames_per_chunk

    @property
    def reference_kinds(self) -> tuple[str, ...]:
        """Every reference kind the model knows, in its canonical order."""
        return ("global", *(f"body_{v}" for v in self.body_views), *(f"expr_{e}" for e in self.expressions))

    def reference_patch(self, kind: str) -> int:
        """Patch size of a reference kind: the global image at video resolution, the others coarser."""
        return self.patch_size if kind == "global" else self.reference_patch_size

    def reference_tokens(self, kind: str) -> int:
        p = self.reference_patch(kind)
        return (self.latent_height // p) * (self.latent_width // p)

    def reference_time_position(self, kind: str) -> int:
        """RoPE time of a reference: a negative offset per type, minus the sub-type's index within its type.

        global -> -gap; body_<view i> -> -2 gap - i; expr_<name j> -> -3 gap - j. Video frames sit at t >= 0.
        """
        gap = self.reference_time_gap
        if kind == "global":
            return -gap
        if kind.startswith("body_") and kind[5:] in self.body_views:
            return -2 * gap - self.body_views.index(kind[5:])
        if kind.startswith("expr_") and kind[5:] in self.expressions:
            return -3 * gap - self.expressions.index(kind[5:])
        raise ConfigError(f"unknown reference kind {kind!r}; known kinds: {', '.join(self.reference_kinds)}")

    @property
    def audio_window_frames(self) -> int:
        """Frames of audio the windows may read before a chunk's first frame (no encoder history)."""
        return max(self.self_audio_before_frames, self.partner_audio_before_frames)

    @property
    def audio_lookahead_frames(self) -> int:
        """Frames of audio needed after a chunk's last frame."""
        return max(self.self_audio_lookahead_frames, self.partner_audio_after_frames)

    @property
    def speech_history_frames(self) -> int:
        """Frames of audio before a frame that the motion track's prediction reads (0 without a track)."""
        if not self.motion_channels:
            return 0
        if self.reaction_kinds:
            return speech_history(self.speech_dilations, self.reaction_frames, self.reaction_window)
        return speech_history(self.speech_dilations)

    @property
    def mel_steps_per_frame(self) -> int:
        """Mel steps per latent frame: what the audio encoder and the speech network read per DiT frame."""
        return self.mel.steps_per_frame * self.t_down

    @property
    def video_frames_per_chunk(self) -> int:
        """Video frames a chunk decodes to (and the Session's unit): ``frames_per_chunk * t_down``."""
        return self.frames_per_chunk * self.t_down

    @property
    def max_time_chunks(self) -> int:
        """Largest chunk time position the Online model ever uses: ``S + W`` (the first full window)."""
        return self.sink_chunks + self.window_chunks


# The motion track of the presets: what own speech (mouth, blinks, prosodic head motion, brows) and partner speech
# (nods, brow raises, smiles) drive, and the emotion the caption asks for (``TEXT_CHANNELS``, set by the speech
# network from the caption's words). Gaze, breath and body turn are left to the references.
AUDIO_CHANNELS = ("jaw_open", "mouth_round", "mouth_wide", "blink_l", "blink_r", "head_yaw", "head_pitch",
                  "head_roll", "brow_raise", "smile")
TEXT_CHANNELS = ("emo_happy", "emo_sad", "emo_surprised", "emo_angry")
TRACK_CHANNELS = AUDIO_CHANNELS + TEXT_CHANNELS
CAPTION_BUCKETS = 256  # the presets' speech_caption_buckets


# ---- presets: plain functions, collected in one dict ----
def tiny() -> DiTConfig:
    """CPU-trainable: 128x128, 4-frame chunks, about 10M parameters."""
    return DiTConfig(motion_channels=TRACK_CHANNELS, speech_caption_buckets=CAPTION_BUCKETS,
        reaction_kinds=REACTION_KINDS, motion_spatial=True)


def small() -> DiTConfig:
    """256x256, a step up for a single GPU."""
    return DiTConfig(
        latent_height=32,
        latent_width=32,
        dim=512,
        num_blocks=12,
        num_heads=8,
        ffn_dim=2048,
        text_dim=256,
        text_layers=4,
        text_heads=4,
        audio_dim=256,
        audio_layers=4,
        mel=MelConfig(n_mels=80),
        motion_channels=TRACK_CHANNELS, speech_caption_buckets=CAPTION_BUCKETS,
        reaction_kinds=REACTION_KINDS,
    )


def base() -> DiTConfig:
    """A Wan2.1-1.3B-like shape (dim 1536, 30 blocks, 12 heads, ffn 8960) at 480x832, 16 latent channels."""
    return DiTConfig(
        latent_channels=16,
        latent_height=60,
        latent_width=104,
        dim=1536,
        num_blocks=30,
        num_heads=12,
        ffn_dim=8960,
        text_dim=1024,
        text_layers=4,
        text_heads=16,
        text_max_bytes=512,
        audio_dim=512,
        audio_layers=6,
        mel=MelConfig(n_mels=80),
        reference_patch_size=4,
        motion_channels=TRACK_CHANNELS, speech_caption_buckets=CAPTION_BUCKETS,
        reaction_kinds=REACTION_KINDS,
        speech_dim=512,
    )


def lpm_17b() -> DiTConfig:
    """LPM 1.0 scale: Wan2.1-14B shape (dim 5120, 40 blocks, 40 heads, ffn 13824) plus LPM's audio K/V per
    block, the audio encoder, reference embedding and a byte text encoder at umT5-XXL width (4096)."""
    return DiTConfig(
        latent_channels=16,
        latent_height=60,
        latent_width=104,
        dim=5120,
        num_blocks=40,
        num_heads=40,
        ffn_dim=13824,
        text_dim=4096,
        text_layers=8,
        text_heads=32,
        text_max_bytes=512,
        audio_dim=1280,
        audio_layers=8,
        mel=MelConfig(n_mels=80),
        reference_patch_size=4,
        motion_channels=TRACK_CHANNELS, speech_caption_buckets=CAPTION_BUCKETS,
        reaction_kinds=REACTION_KINDS,
        speech_dim=1024,
    )


PRESETS: dict[str, Callable[[], DiTConfig]] = {"tiny": tiny, "small": small, "base": base, "lpm-17b": lpm_17b}


def preset(name: str, **overrides) -> DiTConfig:
    """A preset by name, with optional field overrides."""
    if name not in PRESETS:
        raise ConfigError(f"unknown DiT preset {name!r}; known: {', '.join(PRESETS)}")
    return dataclasses.replace(PRESETS[name](), **overrides)


def stored_dit_config(stored: dict) -> DiTConfig:
    """The ``DiTConfig`` of a checkpoint's metadata; keys added since it was saved get the behaviour it was
    trained with (``audio_attention``: "joint"), not today's default."""
    from lpm.config import from_dict

    stored = dict(stored)
    stored.setdefault("audio_attention", "joint")
    return from_dict(DiTConfig, stored)
