"""``DiTEngine``: a DiT checkpoint and a latent codec as a streaming engine (the Online model's inference loop).

Per session: the reference images are encoded once by the codec and their keys/values computed once into the
``KVCache`` (``DiT.prefill``). Per chunk, stages run in their own threads (``lpm.runtime.pipeline``):

1. ``generate``: log-mel of the new audio of both streams (``MelStream``: equal to the offline features), the
   chunk's conditioning over ``DiT.audio_frame_range``, the sampler's steps from noise at ``t = 1`` to ``t = 0``
   (``lpm.diffusion.samplers``) reading the cache, then one forward of the clean chunk with ``update_cache=True``
   (CausVid's commit), so the next chunk sees this one. Timesteps and sampler come from the checkpoint's
   ``extra["online"]`` when a distilled Online checkpoint carries them (``OnlineSampling``), else ``denoise_steps``
   Euler steps on the training shift's grid; settings given explicitly win either way.
2. ``refine`` (optional): the clean chunk re-noised to ``refiner_time`` and taken back to 0 in one step,
   uncached (the chunk plus the references), so it never touches the generator's cache.
3. ``decode``: the codec's ``decode_chunk`` (state threaded between chunks) to uint8 frames, each through the
   ``Restorer`` beside the global reference image when the checkpoint (or the config) names one.

Cache, features and text tokens are fixed-size, so memory and time per chunk are flat in session length. When
the session skips a chunk (behind the clock), its audio still enters the features; the model's chunk counter
does not advance, so model frame ``m`` shows media frame ``m + offset`` (a cut, with audio still in sync).
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lpm.audio.mel import per_latent_frame
from lpm.audio.stream import MelStream
from lpm.config import from_dict
from lpm.data.clip import image_to_tensor, tensor_to_image
from lpm.diffusion.flow import FlowConfig, FlowMatching
from lpm.diffusion.samplers import SAMPLERS, flow_timesteps
from lpm.models.chunk_context import ChunkContext
from lpm.models.conditioning import Conditioning, References
from lpm.models.dit import DiT, load_dit
from lpm.models.expression import GLOBAL, brow_bounds, emotion_channels, expression_kind
from lpm.models.kv_cache import KVCache
from lpm.models.latent_codec import LatentCodec, load_codec
from lpm.models.motion_track import TrackGainError, track_gains, track_ranges, track_tensors
from lpm.models.restorer import Restorer, load_restorer
from lpm.parallel.sequence_dit import SequenceParallelDiT
from lpm.runtime.engines import Character, ChunkInput, Engine, EngineError, Stage
from lpm.training.checkpoint import read_metadata
from lpm.training.vae_trainer import cpu_has_native_bf16
from lpm.world.identity import sample_identity
from lpm.world.render import Renderer
from lpm.world.synth import render_references

DEFAULT_VAE = "checkpoints/vae_tiny.safetensors"
DEFAULT_DENOISE_STEPS = 2  # without a checkpoint's own schedule: Euler steps per chunk
DEFAULT_SAMPLER = "euler"
DEFAULT_REFINER_TIME = 0.3
PRECISIONS = ("fp32", "int8")
ATTENTION_PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}
# What ``lpm serve`` computes in by default (the bench's ``online+served`` system rates exactly this).
SERVING_COMPUTE = {"precision": "int8", "attention_precision": "auto"}


def resolve_attention_precision(name: str, device: str) -> str:
    """``auto`` -> ``bf16`` on a CPU with native bf16 (faster there, docs/bench/speed_cpu_1step), else ``fp32``;
    other names unchanged."""
    if name != "auto":
        return name
    return "bf16" if torch.device(device).type == "cpu" and cpu_has_native_bf16() else "fp32"


@dataclass
class DrawnChunk:
    """A chunk's clean latents on their way to the decoder (the payload of the refine and decode stages)."""

    latents: torch.Tensor  # (1, F, C, h, w)
    cond: Conditioning  # relative to the chunk's frame 0, as the uncached refiner reads it
    restorer_image: torch.Tensor | None  # (1, 3, H, W): what the restorer reads beside these frames, or None


@dataclass
class DiTEngineConfig:
    """Inference settings of the DiT engine."""

    checkpoint: str = ""  # DiT safetensors (lpm.models.dit.save_dit); its config builds the model
    vae: str = DEFAULT_VAE  # codec spec for load_codec (lpm VAE checkpoint or diffusers:/folder)
    denoise_steps: int | None = None  # steps per chunk on the shift's grid; None: the checkpoint's timesteps or 2
    sampler: str | None = None  # lpm.diffusion.samplers.SAMPLERS key; None: the checkpoint's or "euler"
    shift: float | None = None  # timestep shift of the sampling grid; None: the checkpoint's training shift
    parametrisation: str | None = None  # "x0" or "velocity"; None: the checkpoint's (default x0)
    refiner: bool = False  # run the optional one-step refiner stage
    refiner_time: float | None = None  # flow time the refiner re-noises to; None: the checkpoint's or 0.3
    seed: int = 0  # noise seed of the session
    device: str = "cpu"
    # Latency first allowed for the pipeline per chunk: the session's starting clock delay. The session grows the
    # delay to 1.25 x the measured frame lead (pipeline.frame_lead: features, one denoising step and the first
    # frame's decode, ~0.15 s on this 2-core CPU) when that is more; 0.25 held every session 0.1 s later.
    compute_budget_s: float = 0.15
    precision: str = "fp32"  # fp32, or int8: the blocks' linears dynamically quantised (quantize_linears)
    chunk_context: bool = True  # share one DiT.prepare_chunk context between a chunk's forwards (equal output)
    defer_commit: bool = True  # commit after the chunk is handed to the decoder (Engine.settle; equal output)
    # The cached self-attention's dtype (ChunkContext.attention_dtype; needs chunk_context): bf16 matrix products
    # close to fp32 (tested), faster on CPUs with avx512_bf16 / AMX; auto = bf16 where the CPU has them.
    attention_precision: str = "fp32"
    # Motion-track channel -> gain on the track predicted from the audio; None: the checkpoint's
    # (``OnlineSampling.track_gain``), {} : none.
    track_gain: dict[str, float] | None = None
    # Motion-track channel -> [lo, hi] (rig units) the gained track is clipped to; None: the checkpoint's
    # (``OnlineSampling.track_range``), {}: unbounded.
    track_range: dict[str, tuple[float, float]] | None = None
    # (lo, hi): the brow raise drawn from the surprised exemplar (``Conditioning.brow_exemplar``); None: the
    # checkpoint's (``OnlineSampling.brow_exemplar``), (): not.
    brow_exemplar: tuple[float, float] | tuple[()] | None = None
    # A restorer (lpm.models.restorer) run on each decoded frame beside the global reference image; None: the
    # checkpoint's (``OnlineSampling.restorer``, a file beside it), "": none.
    restorer: str | None = None


def quantize_linears(model: DiT) -> DiT:
    """A copy of ``model`` whose blocks' linears run int8 dynamic quantisation (weights int8 per channel,
    activations quantised per call; fbgemm uses AVX512-VNNI where the CPU has it). Embedders, text encoder and
    output head stay fp32. CPU only. Measured on the tiny Online model: docs/bench/speed_cpu."""
    if next(model.parameters()).device.type != "cpu":
        raise EngineError("int8 precision runs on the CPU only")
    with warnings.catch_warnings():  # torch.ao's eager quantisation is deprecated upstream; torch is pinned
        warnings.simplefilter("ignore")
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        quantized = copy.deepcopy(model)
        quantized.blocks = quantize_dynamic(quantized.blocks, {torch.nn.Linear: per_channel_dynamic_qconfig},
                                            dtype=torch.qint8)
    return quantized.eval()


def is_quantized(model: torch.nn.Module) -> bool:
    """Whether ``quantize_linears`` made ``model`` (a shared model is quantised once, not per session)."""
    return any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in model.modules())


def flow_config_of(checkpoint: str) -> FlowConfig:
    """The flow objective a DiT checkpoint was trained with (its ``extra.train_config.flow``), else defaults."""
    extra = read_metadata(checkpoint).get("extra", {})
    flow = (extra.get("train_config") or {}).get("flow")
    return from_dict(FlowConfig, flow) if isinstance(flow, dict) else FlowConfig()


@dataclass(frozen=True)
class OnlineSampling:
    """How a distilled Online checkpoint samples (its ``extra["online"]``, written by the distillation stages).

    Attributes:
        timesteps: decreasing flow times from 1 to 0 the student was trained on (e.g. ``(1.0, 0.75, 0.0)``).
        sampler: the ``SAMPLERS`` key it was trained for (``renoise`` for DMD / Self-Forcing students).
        refiner_time: flow time of its one-step refiner, or None when it was not trained with one.
        track_gain: motion-track channel -> gain on the track the DiT predicts from the audio (``lpm export
            --track-gain``: the DiT under-draws what its track carries, docs/learning.md "Track gain"); empty: none.
        restorer: a ``lpm.models.restorer`` checkpoint applied to the decoded frames (``lpm export --restorer``),
            its path relative to the checkpoint's folder; None: none.
        track_range: motion-track channel -> (lo, hi) in rig units the gained track is clipped to (``lpm export
            --track-range``: the range the DiT saw in training); empty: unbounded.
        brow_exemplar: ``(lo, hi)``, the brow raise drawn from the surprised exemplar (``lpm export
            --brow-exemplar``, ``Conditioning.brow_exemplar``); None: not.
    """

    timesteps: tuple[float, ...]
    sampler: str
    refiner_time: float | None = None
    track_gain: tuple[tuple[str, float], ...] = ()
    restorer: str | None = None
    track_range: tuple[tuple[str, tuple[float, float]], ...] = ()
    brow_exemplar: tuple[float, float] | None = None

    @classmethod
    def from_extra(cls, online: dict, source: str) -> OnlineSampling:
        """Validate ``extra["online"]``; a malformed entry is an ``EngineError`` naming ``source``."""
        try:
            timesteps = tuple(float(t) for t in online["timesteps"])
            sampler = str(online.get("sampler") or DEFAULT_SAMPLER)
            refiner_time = online.get("refiner_time")
            refiner_time = None if refiner_time is None else float(refiner_time)
            track_gain = tuple(track_gains(online.get("track_gain") or {}).items())
            track_range = tuple(track_ranges(online.get("track_range") or {}).items())
            brow = online.get("brow_exemplar")
            brow_exemplar = None if brow is None else brow_bounds(brow)
            restorer = online.get("restorer")
            if restorer is not None and not isinstance(restorer, str):
                raise TypeError(f"restorer must be a file name, got {restorer!r}")
        except (AttributeError, KeyError, TypeError, ValueError) as e:
            raise EngineError(f"{source}: malformed extra['online'] {online!r}: {e!r}") from None
        steps = list(zip(timesteps, timesteps[1:]))
        ends_ok = len(timesteps) >= 2 and abs(timesteps[0] - 1.0) < 1e-6 and abs(timesteps[-1]) < 1e-6
        if not ends_ok or any(b >= a for a, b in steps):
            raise EngineError(f"{source}: online timesteps must decrease from 1.0 to 0.0, got {list(timesteps)}")
        if sampler not in SAMPLERS:
            raise EngineError(f"{source}: unknown online sampler {sampler!r}; known: {', '.join(SAMPLERS)}")
        return cls(timesteps, sampler, refiner_time, track_gain, restorer, track_range, brow_exemplar)


def online_sampling_of(checkpoint: str | Path) -> OnlineSampling | None:
    """The sampling a checkpoint's ``extra["online"]`` prescribes, or None (a Base or pre-distillation one)."""
    online = read_metadata(checkpoint).get("extra", {}).get("online")
    return None if online is None else OnlineSampling.from_extra(online, str(checkpoint))


def square_image(image: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop to a square and resize: ``(H, W, 3)`` uint8 -> ``(size, size, 3)`` uint8."""
    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    im = Image.fromarray(np.ascontiguousarray(image[top:top + side, left:left + side]))
    if side != size:
        im = im.resize((size, size), Image.Resampling.LANCZOS)
    return np.array(im, np.uint8)  # a writable copy (torch.from_numpy warns on read-only arrays)


class FeatureRing:
    """The last ``capacity`` frames of log-mel ``(1, n, k, M)`` and the media frame index of the first."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.frames: torch.Tensor | None = None
        self.base = 0  # media frame of frames[:, 0]

    def append(self, feats: torch.Tensor) -> None:
        self.frames = feats if self.frames is None else torch.cat([self.frames, feats], dim=1)
        extra = self.frames.shape[1] - self.capacity
        if extra > 0:
            self.frames = self.frames[:, extra:]
            self.base += extra

    def slice(self, start: int, end: int) -> torch.Tensor:
        """Media frames ``[start, end)``; ``start`` below what is kept is clamped (the encoder's history)."""
        if self.frames is None or end > self.base + self.frames.shape[1]:
            raise EngineError(f"audio features for frames up to {end} are missing")
        return self.frames[:, max(start, self.base) - self.base:end - self.base]


class DiTEngine(Engine):
    """Streaming generation with a DiT (see the module docstring).

    Args:
        model: a ``DiT`` (any checkpoint; a random tiny one works for timing and tests).
        codec: the latent codec the model was trained with.
        character: reference images (``global`` and optional extras) or a world character (its references
            are rendered).
        cfg: inference settings.
        flow: the objective's parametrisation (x0 or velocity) and shift.
        online: the checkpoint's few-step sampling; None: read from ``cfg.checkpoint``'s metadata when set.
    """

    name = "dit"

    def __init__(self, model: DiT, codec: LatentCodec, character: Character, cfg: DiTEngineConfig | None = None,
                 flow: FlowConfig | None = None, online: OnlineSampling | None = None) -> None:
        self.cfg = cfg = cfg or DiTEngineConfig()
        mc = model.cfg
        if codec.latent_channels != mc.latent_channels:
            raise EngineError(f"codec has {codec.latent_channels} latent channels, the DiT {mc.latent_channels}")
        if codec.t_down != mc.t_down:
            raise EngineError(f"codec compresses {codec.t_down} video frames per latent frame, the DiT expects "
                              f"t_down {mc.t_down}")
        if cfg.sampler is not None and cfg.sampler not in SAMPLERS:
            raise EngineError(f"unknown sampler {cfg.sampler!r}; known: {', '.join(SAMPLERS)}")
        self.model, self.codec = model.eval(), codec
        self.device = torch.device(cfg.device)
        # The Session's clock is in video frames; the model's in latent frames of ``t_down`` video frames each.
        self.t_down = mc.t_down
        self.frames_per_chunk = mc.video_frames_per_chunk
        self.lookahead_frames = mc.audio_lookahead_frames * mc.t_down
        self.resolution = mc.latent_height * codec.downsample
        self.compute_budget_s = cfg.compute_budget_s
        flow = flow or FlowConfig()
        if cfg.parametrisation is not None or cfg.shift is not None:
            flow = FlowConfig(parametrisation=cfg.parametrisation or flow.parametrisation,
                              shift=cfg.shift if cfg.shift is not None else flow.shift)
        self.flow = FlowMatching(flow)
        self.generator = torch.Generator(device="cpu").manual_seed(cfg.seed)
        self.refine_generator = torch.Generator(device="cpu").manual_seed(cfg.seed + 1)
        if online is None and cfg.checkpoint:
            online = online_sampling_of(cfg.checkpoint)
        self.online = online
        if cfg.denoise_steps is not None or online is None:
            steps = cfg.denoise_steps if cfg.denoise_steps is not None else DEFAULT_DENOISE_STEPS
            self.timesteps = flow_timesteps(steps, flow.shift)
        else:
            self.timesteps = torch.tensor(online.timesteps, dtype=torch.float32)
        self.sampler_name = cfg.sampler or (online.sampler if online is not None else DEFAULT_SAMPLER)
        self.sampler = SAMPLERS[self.sampler_name]
        if "generator" in inspect.signature(self.sampler).parameters:  # samplers that draw fresh noise
            self.sampler = partial(self.sampler, generator=self.generator)  # deterministic by the session seed
        gains = cfg.track_gain if cfg.track_gain is not None else dict(online.track_gain if online else ())
        ranges = cfg.track_range if cfg.track_range is not None else dict(online.track_range if online else ())
        try:
            self.track_gain, self.track_range = track_tensors(gains, ranges, mc.motion_channels, self.device)
        except TrackGainError as e:
            raise EngineError(f"{cfg.checkpoint or 'the engine config'}: {e}") from None
        brow = cfg.brow_exemplar if cfg.brow_exemplar is not None else (online.brow_exemplar if online else None)
        try:
            self.brow_exemplar = brow_bounds(brow) if brow else None
        except ValueError as e:
            raise EngineError(f"{cfg.checkpoint or 'the engine config'}: brow_exemplar: {e}") from None
        self.refiner_time = cfg.refiner_time
        if self.refiner_time is None:
            trained = online.refiner_time if online is not None else None
            self.refiner_time = trained if trained is not None else DEFAULT_REFINER_TIME
        # Audio features: enough history for the widest window, the encoder's and the speech network's receptive
        # fields, and a chunk.
        history = model.audio_margin()[0] * mc.t_down
        capacity = history + 2 * self.frames_per_chunk + self.lookahead_frames
        self.mel = [MelStream(mc.mel, device=self.device) for _ in range(2)]
        self.features = [FeatureRing(capacity) for _ in range(2)]
        self._text: str | None = None
        self._text_tokens: tuple[torch.Tensor, torch.Tensor] | None = None
        if cfg.precision not in PRECISIONS:
            raise EngineError(f"unknown precision {cfg.precision!r}; known: {', '.join(PRECISIONS)}")
        attention = resolve_attention_precision(cfg.attention_precision, cfg.device)
        if attention not in ATTENTION_PRECISIONS:
            raise EngineError(f"unknown attention precision {cfg.attention_precision!r}; known: "
                              f"{', '.join([*ATTENTION_PRECISIONS, 'auto'])}")
        if attention != "fp32" and not cfg.chunk_context:
            raise EngineError(f"attention precision {attention} needs chunk_context (the chunk context holds the "
                              "cache in that dtype)")
        self.attention_dtype = ATTENTION_PRECISIONS[attention]
        if cfg.precision == "int8" and not is_quantized(model):
            self.model = model = quantize_linears(model)
        self.restorer = self._load_restorer(cfg, online)
        self.references = self._encode_references(character)
        # A sequence-parallel model caches only its rank's heads (lpm.parallel): it makes its own cache.
        self.cache = model.empty_cache(1, self.device) if isinstance(model, SequenceParallelDiT) else \
            KVCache.empty(mc, 1, self.device)
        model.prefill(self.cache, self.references)
        self.decode_state = None
        # Both the plain and the sequence-parallel DiT share a chunk's work between its forwards (prepare_chunk).
        self.use_context = cfg.chunk_context and isinstance(model, (DiT, SequenceParallelDiT))
        # The commit skips the last block's tail and the head (DiT.forward keys_only; a plain DiT only: a block
        # wrapped for sharding gathers its weights in ``forward``, which keys_values bypasses).
        self.keys_only_commit = type(self.model) is DiT
        self._pending: tuple[torch.Tensor, Conditioning, ChunkContext | None] | None = None  # a commit to run

    @classmethod
    def load(cls, character: Character, cfg: DiTEngineConfig) -> DiTEngine:
        """Build the engine from ``cfg.checkpoint`` and ``cfg.vae``."""
        if not cfg.checkpoint:
            raise EngineError("the DiT engine needs a checkpoint")
        model = load_dit(cfg.checkpoint, device=cfg.device)
        codec = load_codec(cfg.vae, device=cfg.device)
        return cls(model, codec, character, cfg, flow_config_of(cfg.checkpoint))

    # ---- set-up ----
    def _load_restorer(self, cfg: DiTEngineConfig, online: OnlineSampling | None) -> Restorer | None:
        path: str | Path | None = cfg.restorer
        if path is None and online is not None and online.restorer:
            path = Path(cfg.checkpoint).parent / online.restorer
        if not path:
            return None
        restorer = load_restorer(path, device=cfg.device)
        if restorer.cfg.resolution != self.resolution:
            raise EngineError(f"restorer {path} was trained on {restorer.cfg.resolution}px frames; this model draws "
                              f"{self.resolution}px (pass restorer='' to run without one)")
        return restorer

    @torch.no_grad()
    def _encode_references(self, character: Character) -> References:
        images = dict(character.images)
        if character.world is not None and not images:
            renderer = Renderer(sample_identity(character.world.seed, character.world.style), self.resolution)
            images = render_references(renderer)
        if "global" not in images:
            raise EngineError("a reference set needs a global image")
        known = set(self.model.cfg.reference_kinds)
        kinds = [k for k in self.model.cfg.reference_kinds if k in images]
        unknown = sorted(set(images) - known)
        if unknown:
            raise EngineError(f"unknown reference kinds {unknown}; known: {', '.join(self.model.cfg.reference_kinds)}")
        pixels = torch.stack([image_to_tensor(square_image(images[k], self.resolution)) for k in kinds])
        # Each reference as pixels (1, 3, H, W): what the restorer reads beside a decoded frame (``_restorer_image``).
        self.reference_pixels = {k: pixels[i][None].to(self.device) for i, k in enumerate(kinds)}
        latents = self.codec.encode_images(pixels.to(self.device))  # (R, C, h, w)
        return References([latents[i:i + 1] for i in range(len(kinds))], kinds)

    def _text_for(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        if text != self._text:  # encoded once per change, at a chunk boundary
            tokens, mask = self.model.encode_text([text])
            self._text, self._text_tokens = text, (tokens.to(self.device), mask.to(self.device))
        return self._text_tokens

    def _ingest(self, chunk: ChunkInput) -> None:
        for stream, ring, pcm in zip(self.mel, self.features, (chunk.self_pcm, chunk.partner_pcm)):
            ring.append(stream.push(torch.from_numpy(np.ascontiguousarray(pcm))[None].to(self.device)))

    def _latent_mel(self, ring: FeatureRing, start: int, end: int) -> torch.Tensor:
        """Video frames ``[start, end)`` of ``ring`` as ``(1, n, t_down * k, M)``, whole latent frames up to end."""
        mel = ring.slice(start, end)  # (1, F, k, M)
        return per_latent_frame(mel[:, mel.shape[1] % self.t_down:], self.t_down)

    # ---- stages ----
    def skip(self, chunk: ChunkInput) -> None:
        self._ingest(chunk)

    @torch.no_grad()
    def settle(self, timings: dict[str, float]) -> None:
        """The cache commit of the last generated chunk (CausVid: a forward of the clean chunk at t = 0 that
        stores its keys/values), run after its latents went on to the decoder; the next ``_generate`` runs it
        first if nobody did."""
        if self._pending is None:
            return
        x_0, cond, context = self._pending
        self._pending = None
        begin = time.perf_counter()
        extra = {"context": context} if context is not None else {}
        if self.keys_only_commit:
            extra["keys_only"] = True
        self.model(x_0, torch.zeros(1, device=self.device), cond, cache=self.cache, update_cache=True, **extra)
        timings["generate.commit"] = (time.perf_counter() - begin) * 1000

    def _restorer_image(self, cond: Conditioning, first_frame: int, num_frames: int,
                        context: ChunkContext | None = None) -> torch.Tensor | None:
        """The image the restorer reads beside this chunk's frames ``(1, 3, H, W)`` (None without a restorer): the
        global reference, or for an ``"expression"`` restorer the exemplar of the emotion in the chunk's predicted
        track (``expression_kind`` of its mean; the global image when the session has no such exemplar). The track
        is the chunk ``context``'s when there is one (the DiT predicted it already), else predicted here."""
        if self.restorer is None:
            return None
        channels = self.model.cfg.motion_channels
        emotions = emotion_channels(channels)
        if self.restorer.cfg.reference == GLOBAL or not emotions:
            return self.reference_pixels[GLOBAL]
        if context is not None and context.motion is not None:
            track = context.motion.track[0]  # (F, P)
        else:
            track = self.model.predict_motion(cond, first_frame, num_frames)[0]
        mean = track[:, [channels.index(c) for c in emotions]].float().mean(0).tolist()
        return self.reference_pixels.get(expression_kind(mean, emotions), self.reference_pixels[GLOBAL])

    @torch.no_grad()
    def _generate(self, chunk: ChunkInput, timings: dict[str, float]) -> DrawnChunk:
        self.settle(timings)  # the previous chunk's commit, unless the pipeline already ran it
        start_time = time.perf_counter()
        self._ingest(chunk)
        f, t = self.model.cfg.frames_per_chunk, self.t_down  # latent frames per chunk, video frames per latent
        model_first = self.cache.chunks_seen * f
        offset = chunk.first_frame - model_first * t  # video frames (a whole number of chunks)
        start, end = self.model.audio_frame_range(model_first, f)  # latent frames
        text_tokens, text_mask = self._text_for(chunk.text)
        # The ring may have dropped frames below ``start + offset`` only when they precede the stream; what it
        # holds is cut to whole latent frames ending at ``end``.
        mel_self, mel_partner = (self._latent_mel(ring, start * t + offset, end * t + offset) for ring in self.features)
        audio_start = end - mel_self.shape[1]
        cond = Conditioning(text_tokens, text_mask, mel_self, mel_partner, audio_start_frame=audio_start,
                            captions=[chunk.text], track_gain=self.track_gain,
                            track_range=self.track_range, brow_exemplar=self.brow_exemplar)
        context = self.model.prepare_chunk(cond, self.cache, self.attention_dtype) if self.use_context else None
        extra = {"context": context} if context is not None else {}
        timings["generate.features"] = (time.perf_counter() - start_time) * 1000

        def model_fn(x_t, t, c):
            return self.model(x_t, t, c, cache=self.cache, **extra)

        mc = self.model.cfg
        noise = torch.randn(1, f, mc.latent_channels, mc.latent_height, mc.latent_width,
                            generator=self.generator).to(self.device)
        t1 = time.perf_counter()
        x_0 = self.sampler(self.flow.denoiser(model_fn), noise, self.timesteps.to(self.device), cond)
        timings["generate.denoise"] = (time.perf_counter() - t1) * 1000
        self._pending = (x_0, cond, context)
        if not self.cfg.defer_commit:
            self.settle(timings)
        # The refiner runs uncached on the chunk alone: its conditioning is relative to the chunk's frame 0.
        local = Conditioning(text_tokens, text_mask, mel_self, mel_partner,
                             audio_start_frame=audio_start - model_first, references=self.references,
                             captions=[chunk.text], track_gain=self.track_gain,
                             track_range=self.track_range, brow_exemplar=self.brow_exemplar)
        return DrawnChunk(x_0, local, self._restorer_image(cond, model_first, f, context))

    @torch.no_grad()
    def _refine(self, payload: DrawnChunk, timings: dict[str, float]) -> DrawnChunk:
        x_0, cond = payload.latents, payload.cond
        t_r = self.refiner_time
        noise = torch.randn(x_0.shape, generator=self.refine_generator).to(x_0)
        x_t = (1 - t_r) * x_0 + t_r * noise
        t = torch.full((1,), t_r, device=x_0.device)
        v = self.flow.velocity(self.model(x_t, t, cond).float(), x_t, t)
        return dataclasses.replace(payload, latents=x_t - t_r * v)  # one Euler step from t_r to 0

    def _decode(self, payload: DrawnChunk, timings: dict[str, float]) -> np.ndarray:
        return np.stack(list(self._decode_frames(payload, timings)))  # (F, H, W, 3)

    def _decode_frames(self, payload: DrawnChunk, timings: dict[str, float]) -> Iterator[np.ndarray]:
        """The chunk decoded latent frame by latent frame (the codec's stream state threaded through), each
        video frame yielded as soon as it exists: the same frames as one call on the chunk (per-frame and
        causal codecs alike), and no slower on this CPU (88 vs 98 ms CPU for 4 frames of the tiny VAE)."""
        latents = payload.latents  # (1, F, C, h, w)
        for i in range(latents.shape[1]):
            with torch.no_grad():
                video, self.decode_state = self.codec.decode_chunk(latents[:, i:i + 1], self.decode_state)
                if self.restorer is not None:
                    video = self.restorer(video[0].float(), payload.restorer_image)[None]
            for frame in video[0]:  # t_down video frames
                yield tensor_to_image(frame)

    def frame_stream(self):
        return self._decode_frames

    def stages(self) -> list[Stage]:
        stages: list[Stage] = [("generate", self._generate)]
        if self.cfg.refiner:
            stages.append(("refine", self._refine))
        return [*stages, ("decode", self._decode)]
