"""The bench's trained DiT systems, and the loader that lets ``lpm bench --checkpoint`` run DiT checkpoints.

- ``online`` (``OnlineSystem``): a block-causal (distilled) checkpoint in the streaming ``DiTEngine``: the
  references go into the KV cache once per case, then chunk after chunk of ``frames_per_chunk`` frames is made
  from the audio up to its end plus the model's lookahead, exactly the ``ChunkInput`` a ``Session`` cuts. The
  engine's stages run in order in the bench's thread (a ``Session`` would overlap them in threads; on the bench's
  2-core CPU those would oversubscribe the cores its torch threads already use), so ``fps`` is the sequential
  throughput and the latency is chunk + lookahead + the chunk's compute. ``online+refiner``: the same with the
  engine's one-step refiner stage on.
- ``base`` (``BaseSystem``): a bidirectional (Base) checkpoint, offline: the clip is cut into windows of the
  model's training length, each sampled on its own (flow ODE from noise, fixed seed per window) with
  classifier-free guidance on the trainer's conditioning (``ConditionBatch``), then decoded. A window can be made
  once the audio to its end is in, so its chunks are timed window by window.

Both take the case's reference images (``ClipInputs.refs``, the kinds the model knows) and caption; no pose
track (the DiT runs without one, as it is trained to with ``pose_dropout``). Frames come out at the case's
resolution (resized when the model's differs).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lpm.audio.mel import LogMel, per_latent_frame
from lpm.data.clip import image_to_tensor
from lpm.diffusion.cfg import GuidanceSpec, guided
from lpm.diffusion.flow import FlowMatching
from lpm.diffusion.samplers import SAMPLERS, flow_timesteps
from lpm.eval.systems import CHUNK_FRAMES, ClipInputs, System, SystemUnavailable, register_model_loader
from lpm.models.dit import CHECKPOINT_KIND, DiT, load_dit
from lpm.models.latent_codec import LatentCodec, load_codec
from lpm.models.motion_track import TrackGainError, track_tensors
from lpm.models.restorer import Restorer, load_restorer
from lpm.runtime.dit_engine import (
    DEFAULT_VAE,
    SERVING_COMPUTE,
    DiTEngine,
    DiTEngineConfig,
    flow_config_of,
    square_image,
)
from lpm.runtime.engines import Character, ChunkInput, samples_for_frames
from lpm.training.base_samples import to_uint8
from lpm.training.checkpoint import read_metadata
from lpm.training.conditioned import GLOBAL_REFERENCE, ConditionBatch, ConditionedDiT
from lpm.training.latent_cache import silent_mel

REFINER_SUFFIX = "+refiner"
# ``online+served``: the Online checkpoint with the compute settings ``lpm serve`` uses by default.
SERVED_SUFFIX = "+served"
# The attention mode each system name needs from its checkpoint.
ATTENTION_OF = {"base": "bidirectional", "online": "block_causal", f"online{REFINER_SUFFIX}": "block_causal"}
# Without the checkpoint's own training settings: the Base trainer's sample-time guidance.
DEFAULT_GUIDANCE = {"text": 2.0, "audio_self": 2.0}


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_window() -> int:
    """The Base trainer's default window (for a checkpoint that does not record its own)."""
    from lpm.training.base_trainer import BaseTrainConfig

    return BaseTrainConfig().frames


def fit_frames(frames: np.ndarray, res: int) -> np.ndarray:
    """``(F, R, R, 3)`` uint8 -> ``(F, res, res, 3)`` (resized only when ``R != res``)."""
    if frames.shape[1] == res and frames.shape[2] == res:
        return frames
    return np.stack([np.array(Image.fromarray(f).resize((res, res), Image.Resampling.BILINEAR)) for f in frames])


def reference_images(inputs: ClipInputs, kinds: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The case's references of the kinds the model knows (``global`` is required)."""
    if GLOBAL_REFERENCE not in inputs.refs:
        raise SystemUnavailable(f"{inputs.clip_id}: no global reference image")
    return {k: inputs.refs[k] for k in kinds if k in inputs.refs}


def padded_pcm(pcm: np.ndarray, start: int, end: int) -> np.ndarray:
    """``pcm[start:end]`` float32, zero-padded past the end of the recording (silence after the clip)."""
    out = np.zeros(end - start, np.float32)
    part = pcm[start:end]
    out[:len(part)] = part
    return out


def check_checkpoint(name: str, checkpoint: str | Path) -> dict:
    """The checkpoint's metadata, when it is a DiT of the attention mode system ``name`` needs."""
    meta = read_metadata(checkpoint)
    if meta["kind"] != CHECKPOINT_KIND:
        raise SystemUnavailable(f"{checkpoint} holds {meta['kind']!r} weights, not a DiT")
    attention = meta["config"].get("attention", "bidirectional")
    want = ATTENTION_OF.get(name)
    if want is not None and attention != want:
        other = "online" if attention == "block_causal" else "base"
        raise SystemUnavailable(f"{checkpoint} is a {attention} DiT, {name} needs a {want} one "
                                f"(give it as --checkpoint {other}=PATH)")
    return meta


class OnlineSystem(System):
    """A block-causal DiT checkpoint streamed chunk by chunk through ``DiTEngine`` (see the module docstring).

    Args:
        name: the report's name (``online``, ``online+refiner``).
        checkpoint: the DiT safetensors; its ``extra["online"]`` sets the sampler and timesteps (read by the
            engine).
        vae: the latent codec spec the model was trained with.
        refiner: run the engine's one-step refiner stage.
        seed: the engine's noise seed (the same for every case).
    """

    def __init__(self, name: str, checkpoint: str | Path, vae: str = DEFAULT_VAE, refiner: bool = False,
                 seed: int = 0, device: str | None = None, compute: dict | None = None) -> None:
        check_checkpoint(name, checkpoint)
        self.name, self.checkpoint, self.vae, self.refiner, self.seed = name, str(checkpoint), str(vae), refiner, seed
        self.compute = dict(compute or {})  # DiTEngineConfig precision settings (SERVING_COMPUTE for +served)
        self.device = device or default_device()
        # Loaded once (strictly: a bad file is reported before the suite runs) and shared by every case's engine.
        self.model: DiT = load_dit(checkpoint, device=self.device).eval()
        self.codec: LatentCodec = load_codec(vae, device=self.device)
        self.flow = flow_config_of(str(checkpoint))
        mc = self.model.cfg
        if self.codec.latent_channels != mc.latent_channels:
            raise SystemUnavailable(f"{vae} has {self.codec.latent_channels} latent channels, the DiT "
                                    f"{mc.latent_channels}")
        # Video frames, as the engine counts them (a latent frame is t_down video frames).
        self.frames_per_chunk = mc.video_frames_per_chunk
        self.lookahead_frames = mc.audio_lookahead_frames * mc.t_down
        self.note = (f"trained Online DiT {checkpoint} streamed chunk by chunk ({self.frames_per_chunk} frames, "
                     f"KV cache), stages in sequence{', with the one-step refiner' if refiner else ''}"
                     + "".join(f", {k} {v}" for k, v in self.compute.items()))

    def engine(self, inputs: ClipInputs) -> DiTEngine:
        """A fresh engine for one case: the references encoded and prefilled into its cache (the engine reads the
        checkpoint's own sampling settings from ``cfg.checkpoint``)."""
        cfg = DiTEngineConfig(checkpoint=self.checkpoint, vae=self.vae, refiner=self.refiner, seed=self.seed,
                              device=self.device, **self.compute)
        images = reference_images(inputs, self.model.cfg.reference_kinds)
        return DiTEngine(self.model, self.codec, Character(images=images), cfg, self.flow)

    def needs_audio_until(self, inputs: ClipInputs, frame_end: int) -> int:
        f = self.frames_per_chunk
        return min(inputs.num_frames, -(-frame_end // f) * f + self.lookahead_frames)

    def generate(self, inputs: ClipInputs) -> np.ndarray:
        return np.concatenate(list(self.stream(inputs)))

    def stream(self, inputs: ClipInputs, chunk_frames: int = CHUNK_FRAMES) -> Iterator[np.ndarray]:
        # Built here, before the first chunk is asked for: the session's set-up is not a chunk's compute.
        return self._chunks(self.engine(inputs), inputs, chunk_frames)

    def _chunks(self, engine: DiTEngine, inputs: ClipInputs, chunk_frames: int) -> Iterator[np.ndarray]:
        f, la, n = engine.frames_per_chunk, engine.lookahead_frames, inputs.num_frames
        pending: list[np.ndarray] = []
        held, done, prev = 0, 0, 0
        try:
            for k in range(-(-n // f)):
                # What a Session hands the engine: both streams up to the chunk's end + lookahead, the samples
                # new since the previous chunk, silence past the recording.
                end = samples_for_frames((k + 1) * f + la)
                chunk = ChunkInput(k, k * f, padded_pcm(inputs.self_audio, prev, end),
                                   padded_pcm(inputs.partner_audio, prev, end), end, inputs.caption, 0.0)
                prev = end
                frames = engine.step(chunk)[: n - k * f]  # (<= f, R, R, 3)
                pending.append(fit_frames(frames, inputs.res))
                held += len(pending[-1])
                while held >= chunk_frames or (held and done + held == n):
                    block = np.concatenate(pending)
                    out, rest = block[:chunk_frames], block[chunk_frames:]
                    pending, held = ([rest] if len(rest) else []), len(rest)
                    done += len(out)
                    yield out
        finally:
            engine.close()


@dataclass
class BaseSampling:
    """How ``BaseSystem`` samples a window. The settings left None come from the checkpoint's ``extra["base"]``
    (``lpm export --base-steps / --track-gain / --restorer`` of a Base checkpoint), else their defaults."""

    steps: int | None = None  # ODE steps per window; None: the checkpoint's, else DEFAULT_BASE_STEPS
    sampler: str = "euler"  # lpm.diffusion.samplers.SAMPLERS key
    # CFG scales; None: the checkpoint's (extra["base"], else its training ones, else DEFAULT_GUIDANCE); {}: none
    guidance: dict[str, float] | None = None
    window_frames: int | None = None  # frames per window; None: the checkpoint's training window (or the trainer's)
    seed: int = 0  # window k starts from the noise of seed + k
    # Motion-track channel -> gain on the track the DiT predicts from the audio; None: the checkpoint's, {}: none.
    track_gain: dict[str, float] | None = None
    # Motion-track channel -> [lo, hi] (rig units) the gained track is clipped to; None: the checkpoint's, {}: none.
    track_range: dict[str, tuple[float, float]] | None = None
    # A ``lpm.models.restorer`` checkpoint (a "global" one) run on each decoded frame beside the global reference
    # image; None: the checkpoint's (a path relative to its folder), "": none.
    restorer: str | None = None


DEFAULT_BASE_STEPS = 8


class BaseSystem(System):
    """A bidirectional DiT checkpoint generating a case offline, window by window (see the module docstring).

    Args:
        name: the report's name (``base``).
        checkpoint: the DiT safetensors (its ``extra["train_config"]`` gives the flow, window and guidance).
        vae: the latent codec spec the model was trained with.
        sampling: steps, sampler, guidance, window and seed.
    """

    def __init__(self, name: str, checkpoint: str | Path, vae: str = DEFAULT_VAE, sampling: BaseSampling | None = None,
                 device: str | None = None) -> None:
        meta = check_checkpoint(name, checkpoint)
        self.name, self.sampling = name, sampling or BaseSampling()
        self.device = torch.device(device or default_device())
        self.model: DiT = load_dit(checkpoint, device=str(self.device)).eval()
        self.codec: LatentCodec = load_codec(vae, device=self.device)
        mc = self.model.cfg
        if self.codec.latent_channels != mc.latent_channels:
            raise SystemUnavailable(f"{vae} has {self.codec.latent_channels} latent channels, the DiT "
                                    f"{mc.latent_channels}")
        if self.codec.t_down != mc.t_down:
            raise SystemUnavailable(f"{vae} compresses {self.codec.t_down} video frames per latent frame, the DiT "
                                    f"was built for t_down {mc.t_down}")
        self.t_down = mc.t_down  # video frames per latent frame; windows, audio and samples count latent frames
        if self.sampling.sampler not in SAMPLERS:
            raise SystemUnavailable(f"unknown sampler {self.sampling.sampler!r}; known: {', '.join(SAMPLERS)}")
        train = meta["extra"].get("train_config") or {}
        self.window = int(self.sampling.window_frames or train.get("frames") or default_window())
        if self.window % mc.frames_per_chunk:
            raise SystemUnavailable(f"window {self.window} is not a multiple of frames_per_chunk "
                                    f"{mc.frames_per_chunk}")
        stored = meta["extra"].get("base") or {}
        if not isinstance(stored, dict):
            raise SystemUnavailable(f"{checkpoint}: malformed extra['base'] {stored!r} (expected a mapping)")
        guidance = next((g for g in (self.sampling.guidance, stored.get("guidance"), train.get("guidance"))
                         if g is not None), DEFAULT_GUIDANCE)
        self.guidance = GuidanceSpec(dict(guidance))
        self.flow = FlowMatching(flow_config_of(str(checkpoint)))
        self.steps = int(self.sampling.steps or stored.get("steps") or DEFAULT_BASE_STEPS)
        self.timesteps = flow_timesteps(self.steps, self.flow.cfg.shift, device=self.device)
        gains = self.sampling.track_gain if self.sampling.track_gain is not None else stored.get("track_gain") or {}
        ranges = self.sampling.track_range if self.sampling.track_range is not None else stored.get("track_range") or {}
        try:
            self.track_gain, self.track_range = track_tensors(gains, ranges, mc.motion_channels, self.device)
        except TrackGainError as e:
            raise SystemUnavailable(f"{checkpoint}: {e}") from None
        self.denoiser = guided(self.flow.denoiser(ConditionedDiT(self.model)), self.guidance)
        self.log_mel = LogMel(mc.mel)
        self.silent = silent_mel(mc.mel)
        # The audio a window's forward reads, around its frames, as the trainer cuts it (WindowSampler).
        self.audio_before, self.audio_after = self.model.audio_margin()
        self.resolution = mc.latent_height * self.codec.downsample
        self.restorer = self._load_restorer(checkpoint, stored)
        scales = ", ".join(f"{k} {v:g}" for k, v in self.guidance.scales.items()) or "none"
        gain = ", ".join(f"{k} {v:g}" for k, v in gains.items())
        self.note = (f"trained Base DiT {checkpoint}, offline: {self.window}-frame bidirectional windows, "
                     f"{self.steps} {self.sampling.sampler} steps, CFG ({scales})"
                     + (f", track gain ({gain})" if gain else "")
                     + (", track range" if self.track_range is not None else "")
                     + (f", restorer {self.restorer_path}" if self.restorer is not None else ""))

    def _load_restorer(self, checkpoint: str | Path, stored: dict) -> Restorer | None:
        path = self.sampling.restorer
        if path is None and stored.get("restorer"):
            path = str(Path(checkpoint).parent / str(stored["restorer"]))
        self.restorer_path = path
        if not path:
            return None
        if not Path(path).is_file():
            raise SystemUnavailable(f"{checkpoint} names restorer {path}, which does not exist (keep the two files "
                                    f"together, or export again with --restorer)")
        restorer = load_restorer(path, device=self.device)
        if restorer.cfg.reference != GLOBAL_REFERENCE:
            raise SystemUnavailable(f"restorer {path} reads the {restorer.cfg.reference!r} image; a Base system runs "
                                    f"a global-reference restorer")
        if restorer.cfg.resolution != self.resolution:
            raise SystemUnavailable(f"restorer {path} was trained on {restorer.cfg.resolution}px frames; this model "
                                    f"draws {self.resolution}px")
        return restorer

    # ---- windows (in latent frames: ``t_down`` video frames each) ----
    def latent_count(self, num_frames: int) -> int:
        """Latent frames that cover ``num_frames`` video frames (the last group padded past the clip's end)."""
        return -(-num_frames // self.t_down)

    def windows(self, num_frames: int) -> list[tuple[int, int, int]]:
        """``(start, keep_from, keep_to)`` of each window, in latent frames, for a clip of ``num_frames`` latent
        frames: windows of ``self.window`` from frame 0, the last one ending at the clip's end (overlapping its
        predecessor; only its new frames are kept)."""
        w = self.window
        starts = list(range(0, max(num_frames - w, 0) + 1, w))
        if starts[-1] + w < num_frames:
            starts.append(num_frames - w)
        out, kept = [], 0
        for s in starts:
            stop = min(s + w, num_frames)
            out.append((s, kept, stop))
            kept = stop
        return out

    def needs_audio_until(self, inputs: ClipInputs, frame_end: int) -> int:
        t = self.t_down
        for start, _, stop in self.windows(self.latent_count(inputs.num_frames)):
            if frame_end <= stop * t:
                return min(inputs.num_frames, (start + self.window + self.audio_after) * t)
        return inputs.num_frames

    # ---- conditioning (the Base trainer's: latent_cache.encode_clip + WindowSampler.assemble) ----
    @torch.no_grad()
    def clip_mel(self, inputs: ClipInputs) -> torch.Tensor:
        """``(2, L, t_down * k, M)`` log-mel of own (row 0) and partner (row 1) voice per latent frame
        (``per_latent_frame``, as the latent cache stores it); silence past the recording."""
        frames = self.latent_count(inputs.num_frames) * self.t_down
        pcm = torch.from_numpy(np.stack([inputs.self_audio, inputs.partner_audio]).astype(np.float32))
        mel = self.log_mel(pcm)[:, :frames]  # (2, F', k, M)
        if mel.shape[1] < frames:
            pad = torch.full((2, frames - mel.shape[1], *mel.shape[2:]), self.silent)
            mel = torch.cat([mel, pad], 1)
        return per_latent_frame(mel, self.t_down)  # (2, L, t_down * k, M); unchanged at t_down 1

    @torch.no_grad()
    def reference_latents(self, inputs: ClipInputs) -> dict[str, torch.Tensor]:
        """Kind -> ``(1, C, h, w)`` latents of the case's references, in the model's canonical order."""
        images = reference_images(inputs, self.model.cfg.reference_kinds)
        pixels = torch.stack([image_to_tensor(square_image(im, self.resolution)) for im in images.values()])
        latents = self.codec.encode_images(pixels.to(self.device))  # (R, C, h, w)
        return {k: latents[i:i + 1] for i, k in enumerate(images)}

    def conditioning(self, inputs: ClipInputs, mel: torch.Tensor, references: dict[str, torch.Tensor],
                     start: int) -> ConditionBatch:
        """The window at ``start``: mel of frames ``start - audio_before .. start + window + audio_after``."""
        frames = torch.arange(start - self.audio_before, start + self.window + self.audio_after)
        inside = (frames >= 0) & (frames < mel.shape[1])
        window_mel = mel[:, frames.clamp(0, mel.shape[1] - 1)].clone()  # (2, Fa, k, M)
        window_mel[:, ~inside] = self.silent
        return ConditionBatch(captions=[inputs.caption], mel_self=window_mel[:1], mel_partner=window_mel[1:],
                              audio_start_frame=-self.audio_before, references=references, pose=None,
                              silent_mel=self.silent, track_gain=self.track_gain,
                              track_range=self.track_range).to(self.device)

    # ---- generation ----
    @torch.no_grad()
    def sample_window(self, cond: ConditionBatch, seed: int, reference: torch.Tensor | None = None) -> np.ndarray:
        """One window from noise: ``(window * t_down, R, R, 3)`` uint8; decoded frames go through the restorer
        beside ``reference`` (the global image ``(1, 3, R, R)`` in [-1, 1]) when there is one."""
        mc = self.model.cfg
        shape = (1, self.window, mc.latent_channels, mc.latent_height, mc.latent_width)
        noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(self.device)
        latents = SAMPLERS[self.sampling.sampler](self.denoiser, noise, self.timesteps, cond)  # (1, W, C, h, w)
        video = self.codec.decode(latents.float())[0]  # (T, 3, R, R)
        if self.restorer is not None:
            if reference is None:
                raise ValueError("a Base system with a restorer samples a window beside the global reference image")
            video = self.restorer(video, reference.expand(video.shape[0], -1, -1, -1))
        return to_uint8(video)

    def generate(self, inputs: ClipInputs) -> np.ndarray:
        return np.concatenate(list(self.stream(inputs)))

    def stream(self, inputs: ClipInputs, chunk_frames: int = CHUNK_FRAMES) -> Iterator[np.ndarray]:
        return self._chunks(inputs, self.reference_latents(inputs), chunk_frames)

    def _chunks(self, inputs: ClipInputs, references: dict[str, torch.Tensor],
                chunk_frames: int) -> Iterator[np.ndarray]:
        mel, t = self.clip_mel(inputs), self.t_down
        image = None
        if self.restorer is not None:  # the global reference as the restorer reads it (N, 3, R, R) in [-1, 1]
            image = image_to_tensor(square_image(inputs.refs[GLOBAL_REFERENCE], self.resolution))[None].to(self.device)
        for k, (start, keep_from, keep_to) in enumerate(self.windows(mel.shape[1])):
            frames = self.sample_window(self.conditioning(inputs, mel, references, start), self.sampling.seed + k,
                                        image)
            keep_to_video = min(keep_to * t, inputs.num_frames)  # the last group's padding is cut
            frames = fit_frames(frames[(keep_from - start) * t: keep_to_video - start * t], inputs.res)
            for s in range(0, len(frames), chunk_frames):
                yield frames[s: s + chunk_frames]


def load_dit_system(name: str, checkpoint: Path, steps: int | None = None) -> System:
    """``lpm bench``'s loader of ``dit`` checkpoints: ``base`` / ``online`` / ``online+refiner`` by name, any other
    name by the checkpoint's attention mode (bidirectional -> Base, block-causal -> Online). An Online name with
    ``+refiner`` runs the refiner; with ``+served``, ``lpm serve``'s default compute (``SERVING_COMPUTE``).

    Args:
        steps: ODE steps per window of a Base system (None: ``BaseSampling``'s); an Online checkpoint's steps are
            its own (``extra["online"]``).
    """
    if name in ATTENTION_OF:
        attention = ATTENTION_OF[name]
    else:
        attention = check_checkpoint(name, checkpoint)["config"].get("attention", "bidirectional")
    vae = training_vae(checkpoint)
    if attention == "bidirectional":
        return BaseSystem(name, checkpoint, vae=vae,
                          sampling=BaseSampling() if steps is None else BaseSampling(steps=steps))
    return OnlineSystem(name, checkpoint, vae=vae, refiner=REFINER_SUFFIX in name,
                        compute=SERVING_COMPUTE if SERVED_SUFFIX in name else None)


def training_vae(checkpoint: str | Path) -> str:
    """The codec a DiT checkpoint was trained with: the ``vae`` of the run's ``sources.json`` beside it (a run's
    ``dit.safetensors`` / ``dit_ema.safetensors``), when that file exists; else the shipped ``DEFAULT_VAE``."""
    from lpm.training.checkpoint import run_sources

    vae = run_sources(checkpoint).get("vae")
    return vae if isinstance(vae, str) and Path(vae).exists() else DEFAULT_VAE


register_model_loader(CHECKPOINT_KIND, load_dit_system)
