"""Training of the Base model (``lpm train base``): a bidirectional DiT on VAE latents with flow matching.

Data: windows of ``frames`` latent frames from the cached ``train`` split (``latent_cache``; encoded on the
first run), mixing speak / listen / conversation / idle clips, with CFG dropout of text, own audio, partner
audio and extra references (``base_batches``). Objective: ``lpm.diffusion.FlowMatching``. Runs as one
process or under ``torchrun`` with FSDP2 (``distributed``); rank 0 logs and writes.

Run directory:
```
RUN/config.json                 the resolved BaseTrainConfig (+ the resolved DiT config in dit_config.json)
RUN/log.jsonl                   one row per step: step, loss, lr, grad_norm, s_per_step
RUN/loss.png                    the loss curve (rewritten at every checkpoint)
RUN/dit.safetensors             inference weights + DiTConfig;  RUN/dit_ema.safetensors: the EMA weights
RUN/train_state.pt              weights, EMA, optimizer, step: what a rerun resumes from (atomic)
RUN/samples/step_XXXXXX.mp4     generated (left) beside the truth (right) of a val window, both voices
RUN/cache/                      the latent cache (unless cache_dir is set)
```
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lpm.audio.mel import MelConfig
from lpm.config import ConfigError, apply_overrides, load_config, to_dict
from lpm.data.clip import read_manifest
from lpm.diffusion import Batch
from lpm.diffusion.cfg import GuidanceSpec
from lpm.diffusion.flow import FlowConfig, FlowMatching
from lpm.diffusion.samplers import SAMPLERS
from lpm.errors import LpmError
from lpm.models.dit import DiT, load_dit, save_dit
from lpm.models.dit_config import DiTConfig, preset, stored_dit_config
from lpm.models.export import dit_weights_of
from lpm.models.latent_codec import load_codec
from lpm.models.motion_track import REACTION_FIELDS
from lpm.training import distributed as D
from lpm.training.base_batches import ConditionDropout, Window, WindowSampler, shard_batch
from lpm.training.base_plots import plot_base_losses
from lpm.training.base_samples import generate, write_sample
from lpm.training.checkpoint import CheckpointError, load_train_state, read_metadata, save_train_state
from lpm.training.conditioned import ConditionedDiT
from lpm.training.diagnostics import SPEAKING_MODES, audio_checks, fixed_batch, gap
from lpm.training.latent_cache import load_latent_cache, silent_mel
from lpm.training.vae_trainer import autocast, resolve_precision


@dataclass
class BaseTrainConfig:
    """Everything ``lpm train base`` reads; saved as RUN/config.json."""

    # Name of the DiT size preset ``model`` started from (lpm.models.dit_config.PRESETS; set by --preset).
    preset: str = "tiny"
    # The DiT's shape: the preset's, with overrides (model.num_blocks=4); latent channels and size are then
    # set from the VAE and the data, the attention to bidirectional.
    model: DiTConfig = field(default_factory=DiTConfig)
    # The flow-matching objective (parametrisation, timestep shift, time distribution).
    flow: FlowConfig = field(default_factory=FlowConfig)
    # Classifier-free-guidance dropout probability of each condition.
    dropout: ConditionDropout = field(default_factory=ConditionDropout)
    # Optimizer steps in total (a rerun with a larger value continues training).
    steps: int = 100_000
    # Windows per step (the global batch, split evenly over ranks).
    batch: int = 4
    # Latent frames per window (a multiple of the DiT's frames_per_chunk; 8 = 2 chunks of the tiny preset).
    frames: int = 8
    # Peak AdamW learning rate after ``warmup_steps``, then cosine decay to lr * min_lr_ratio at ``steps``.
    lr: float = 3e-4
    warmup_steps: int = 200
    min_lr_ratio: float = 0.1
    # AdamW decoupled weight decay and betas.
    weight_decay: float = 0.0
    betas: tuple[float, ...] = (0.9, 0.99)
    # Gradient norm clip (0 = off).
    grad_clip: float = 1.0
    # EMA decay of the exported weights (warmed up as min(decay, (1 + step) / (10 + step))).
    ema_decay: float = 0.999
    # Extra loss weight on latent cells covered by the mouth or eyes (1 + face_weight * coverage).
    face_weight: float = 4.0
    # Draw the clip's mode (speak / listen / conversation / idle) uniformly before the clip.
    balance_modes: bool = True
    # "auto" (bf16 autocast on CUDA, fp32 on CPU: AVX2 bf16 matmuls are ~4x slower), "bf16" or "fp32".
    precision: str = "auto"
    # Device ("cpu" or "cuda"); under torchrun each rank takes cuda:LOCAL_RANK.
    device: str = "cpu"
    # Torch CPU threads (0 = torch's default).
    threads: int = 0
    # Checkpoint every this many steps, and also when this many minutes passed since the last one.
    checkpoint_every: int = 200
    checkpoint_minutes: float = 5.0
    # Every this many steps, log ``audio_gain``: how much the face-weighted loss of a fixed batch of speaking windows
    # rises when each window gets another window's own voice (relative; ~0 = the model ignores its audio, so it
    # cannot lip-sync). 0 = never.
    audio_check_every: int = 100
    # Stop (with a checkpoint) after this many minutes of steps in this invocation, even before ``steps``
    # (0 = no limit): for time-boxed runs on a lent machine. A rerun continues.
    max_minutes: float = 0.0
    # Write a sample mp4 every this many steps (0 = never); the sampler, its steps and the CFG scales.
    sample_every: int = 1000
    sample_steps: int = 8
    sampler: str = "euler"
    guidance: dict[str, float] = field(default_factory=lambda: {"text": 2.0, "audio_self": 2.0})
    # Training clips used (0 = the whole train split; a small number overfits, for tests).
    train_clips: int = 0
    # Seed of the weights, the batches (a function of seed and step) and the noise.
    seed: int = 0
    # Where the latent cache lives ("" = RUN/cache).
    cache_dir: str = ""
    # Start from these weights (a DiT checkpoint, e.g. an exported Base, or a run directory) instead of random
    # ones, with a fresh optimizer and schedule: fine-tuning. Used only when the run has no train state yet.
    # A checkpoint saved before the motion track existed loads with a fresh (zero-output) track.
    init: str = ""
    # The speech -> motion network (``lpm train speech`` RUN/speech.safetensors) loaded into the DiT when the run
    # starts ("" = keep what ``init`` or the random init gave). Frozen unless ``train_speech``.
    speech: str = ""
    train_speech: bool = False
    # Share of samples that see the motion track predicted from their audio instead of the true one (the rest
    # see the truth, so the DiT learns to render the track; these teach it to render what inference gives it).
    predicted_motion: float = 0.25
    # The channels those samples see predicted; the others stay true (() = all). E.g. the mouth and brows only:
    # the head pose then always matches the frames, so the DiT follows it (idle motion sets it at inference).
    predicted_channels: tuple[str, ...] = ()
    # Extra loss weight on mouth-only latent cells (on top of face_weight's mouth-and-eyes weight).
    mouth_weight: float = 0.0
    # Extra loss weight on the brows and cheeks (where the emotions show; face_weights.EXPRESSION_FEATURES).
    expression_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.batch < 1 or self.steps < 0 or self.frames < 1:
            raise ConfigError("batch and frames must be >= 1, steps >= 0")
        if not 0 <= self.predicted_motion <= 1:
            raise ConfigError(f"predicted_motion must be in [0, 1], got {self.predicted_motion}")
        for name in ("face_weight", "mouth_weight", "expression_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"sampler must be one of {list(SAMPLERS)}, got {self.sampler!r}")
        GuidanceSpec(dict(self.guidance))  # validates the condition names


def resolve_dit_config(cfg: BaseTrainConfig, latent_channels: int, latent_size: tuple[int, int]) -> DiTConfig:
    """The preset, the ``model`` overrides, and the latent shape of the data (which always wins)."""
    dit = apply_overrides(cfg.model, {"latent_channels": latent_channels, "latent_height": latent_size[0],
                                "latent_width": latent_size[1], "attention": "bidirectional"})
    if cfg.frames % dit.frames_per_chunk:
        raise ConfigError(f"frames {cfg.frames} is not a multiple of frames_per_chunk {dit.frames_per_chunk}")
    return dit


class BaseTrainer:
    """One Base training run in one directory; ``run()`` trains, resuming from ``RUN/train_state.pt``.

    Args:
        cfg: the resolved config.
        data_dir: a clip data set (manifest.jsonl; ``train`` for training, ``val`` for samples).
        vae: the codec spec (an lpm VAE checkpoint or run, or ``diffusers:/folder``).
        run_dir: where everything is written (see the module docstring).
    """

    progress_label = "train base"  # the progress bar's label (the distillation stages name themselves)

    def __init__(self, cfg: BaseTrainConfig, data_dir: str | Path, vae: str, run_dir: str | Path) -> None:
        self.cfg, self.data_dir, self.vae_spec, self.run_dir = cfg, Path(data_dir), str(vae), Path(run_dir)
        self.info = D.init_distributed(cfg.device)
        if cfg.batch % self.info.world_size:
            raise ConfigError(f"batch {cfg.batch} does not divide over {self.info.world_size} processes")
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        self.autocast_dtype = resolve_precision(cfg.precision, cfg.device)
        self.codec = load_codec(self.vae_spec, device=self.info.device)
        self.flow = FlowMatching(cfg.flow)
        self.step = 0
        self._audio_batch: Batch | None = None  # audio_gain's fixed batch, drawn on first use
        self._checks: list | None = None  # the fixed batches of ``audio_checks``, drawn on first use

    # ---- setup ----
    def _load_data(self) -> None:
        cfg = self.cfg
        mel = cfg.model.mel  # of the DiT config, the cache depends on the mel only
        cache = Path(cfg.cache_dir) if cfg.cache_dir else self.run_dir / "cache"
        # Rank 0 encodes first; the others then read its files (one encoder, no write races).
        kwargs = dict(codec=self.codec, vae_spec=self.vae_spec, mel=mel, cache_dir=cache, device=self.info.device)
        if not self.info.is_main:
            D.barrier(self.info)
        self.train_clips = load_latent_cache(self.data_dir, "train", limit=cfg.train_clips,
                                             show_progress=self.info.is_main, **kwargs)
        has_val = bool(read_manifest(self.data_dir, "val"))
        self.sample_clip = (load_latent_cache(self.data_dir, "val", limit=1, show_progress=False, **kwargs)
                            if has_val else self.train_clips)[0]
        if self.info.is_main:
            D.barrier(self.info)
        if not self.train_clips:
            raise LpmError(f"{self.data_dir}: no clips in the train split")
        self.mel: MelConfig = mel

    def _build_model(self) -> None:
        cfg = self.cfg
        c, h, w = self.train_clips[0].latents.shape[1:]
        self.dit_cfg = resolve_dit_config(cfg, c, (h, w))
        torch.manual_seed(cfg.seed)
        dit = DiT(self.dit_cfg)
        fresh = not self._state_path().is_file()
        if cfg.init and fresh:
            self._load_init(dit)
        if cfg.speech and fresh:
            if not self.dit_cfg.motion_channels:
                raise ConfigError("speech= needs a DiT with a motion track (model.motion_channels is empty)")
            from lpm.training.speech_trainer import load_speech_into

            extra = load_speech_into(dit.speech_motion, cfg.speech, self.dit_cfg)
            if self.info.is_main:
                print(f"speech network from {cfg.speech} (val r {extra.get('val_r', {}).get('jaw_open', '?')} "
                      f"for jaw_open)", flush=True)
        self._freeze_speech(dit)
        self.export_dit = DiT(self.dit_cfg) if self.info.is_main else None  # full CPU copy for saving/samples
        self.sampler = self._window_sampler(dit)
        self.model = ConditionedDiT(dit).to(self.info.device)
        D.shard_model(self.model, dit.blocks, self.info)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.ema = [p.detach().clone() for p in self.params]
        self.opt = torch.optim.AdamW(self.params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
        self.num_params = sum(p.numel() for p in dit.parameters())  # global numel, also for DTensors

    def _window_sampler(self, dit: DiT) -> WindowSampler:
        """The run's training windows for ``dit``: its audio margin (real audio before the window: the windows',
        the encoder's and the speech network's history), its motion track, the run's dropout and loss weights."""
        cfg = self.cfg
        before, after = dit.audio_margin()
        return WindowSampler(self.train_clips, cfg.frames, before, after, silent_mel(self.mel), cfg.dropout,
                             cfg.face_weight, cfg.balance_modes, cfg.seed, dit.cfg.motion_channels,
                             cfg.predicted_motion, cfg.mouth_weight, cfg.predicted_channels, cfg.expression_weight)

    def _freeze_speech(self, dit: DiT) -> None:
        """The speech network is trained on world truth (``lpm train speech``): kept as is unless ``train_speech``."""
        if dit.cfg.motion_channels and not self.cfg.train_speech:
            dit.speech_motion.requires_grad_(False)

    def _load_init(self, dit: DiT) -> None:
        """The ``init`` weights into ``dit``: its config must match the run's except the attention modes
        (``attention``, ``audio_attention``), which use the same weights differently, the motion track and the
        reference concat: a checkpoint without them loads into a DiT with them, whose new parts start fresh (their
        outputs are zero, so the loaded model is unchanged)."""
        path = dit_weights_of(self.cfg.init)
        stored = stored_dit_config(read_metadata(path)["config"])
        mine = dataclasses.replace(self.dit_cfg, attention=stored.attention, audio_attention=stored.audio_attention)
        track_fields = ("motion_dropout", "motion_spatial")
        if not stored.motion_channels:
            track_fields += ("motion_channels", "speech_dim", "speech_dilations")
        if not stored.reaction_kinds:  # the speech network's reaction head starts fresh (or comes with speech=)
            track_fields += tuple(REACTION_FIELDS)
        if not stored.reference_concat:  # the reference's token path starts at zero
            track_fields += ("reference_concat",)
        if not stored.reference_residual:  # the head restarts at zero: the model starts as the still reference
            track_fields += ("reference_residual",)
        if not stored.reference_warp:  # the warp starts as the identity
            track_fields += ("reference_warp",)
        mine = dataclasses.replace(mine, **{k: getattr(stored, k) for k in track_fields})
        try:
            loaded = load_dit(path, expect=mine).state_dict()
        except CheckpointError as e:
            raise ConfigError(f"init is a DiT of another shape: {e}") from None
        missing, unexpected = dit.load_state_dict(loaded, strict=False)
        new = ("speech_motion.", "motion_embed.", "motion_map", "reference_in.", "reference_warp.")  # may lack
        if unexpected or any(not k.startswith(new) for k in missing):
            raise ConfigError(f"init {path}: keys differ from the model: missing {missing}, unexpected {unexpected}")
        if dit.cfg.reference_residual and not stored.reference_residual:
            dit.restart_head()
        if self.info.is_main:
            print(f"initialised from {path}", flush=True)

    # ---- state ----
    def _state_path(self) -> Path:
        return self.run_dir / "train_state.pt"

    def _optimizer_state(self, model: torch.nn.Module | None = None, opt: torch.optim.Optimizer | None = None) -> dict:
        """The full optimizer state of ``opt`` over ``model`` (default: the trained model's); a collective."""
        model, opt = model or self.model, opt or self.opt
        if not self.info.distributed:
            return opt.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(model, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def _load_optimizer_state(self, state: dict, model: torch.nn.Module | None = None,
                              opt: torch.optim.Optimizer | None = None) -> None:
        model, opt = model or self.model, opt or self.opt
        if not self.info.distributed:
            opt.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(model, opt, state,
                                 options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))

    def _resume(self) -> None:
        path = self._state_path()
        if not path.is_file():
            return
        state = load_train_state(path)
        if stored_dit_config(state["dit_config"]) != self.dit_cfg:
            raise LpmError(f"{self.run_dir} holds a run of another DiT config; use another --out or the same "
                           f"preset and model keys (saved: {state['dit_config']})")
        D.load_full_state_dict(self.model, state["model"])
        names = [n for n, p in self.model.named_parameters() if p.requires_grad]
        with torch.no_grad():
            for name, e in zip(names, self.ema):
                e.copy_(D.shard_like(state["ema"][name], e))
        self._load_optimizer_state(state["optimizer"] if self.info.is_main else {})
        self._load_extra_state(state)
        self.step = int(state["step"])
        log = self.run_dir / "log.jsonl"
        if self.info.is_main and log.is_file():
            # Steps logged after the checkpoint are redone: drop them so the log has one row per step.
            rows = [r for r in log.read_text().splitlines() if r.strip() and json.loads(r)["step"] <= self.step]
            log.write_text("".join(r + "\n" for r in rows))
        if self.info.is_main:
            print(f"resuming from step {self.step} ({path})", flush=True)

    # ---- hooks of the trainers built on this one (lpm.distill) ----
    def _checkpoint_extra(self) -> dict[str, Any]:
        """Extra metadata stored with the exported weights."""
        return {}

    def _extra_state(self) -> dict[str, Any]:
        """Extra entries of the train state (other models, their optimizers); a collective every rank calls."""
        return {}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what ``_extra_state`` saved."""

    def _full_states(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Full (unsharded, CPU) live and EMA state dicts; a collective every rank calls."""
        live = D.full_state_dict(self.model)
        names = [n for n, p in self.model.named_parameters() if p.requires_grad]
        ema = {**live, **{n: D.full_tensor(e).detach().cpu() for n, e in zip(names, self.ema)}}
        return live, ema

    def _as_dit(self, state: dict[str, torch.Tensor]) -> DiT | None:
        """Rank 0's CPU copy of the DiT holding ``state`` (a ``ConditionedDiT`` state dict)."""
        if self.export_dit is None:
            return None
        prefix = "dit."
        self.export_dit.load_state_dict({k[len(prefix):]: v for k, v in state.items()}, strict=True)
        return self.export_dit

    def _checkpoint(self) -> None:
        live, ema = self._full_states()
        optimizer = self._optimizer_state()
        more = self._extra_state()
        if not self.info.is_main:
            return
        extra = {"step": self.step, "train_config": to_dict(self.cfg), **self._checkpoint_extra()}
        save_dit(self.run_dir / "dit.safetensors", self._as_dit(live), extra)
        save_dit(self.run_dir / "dit_ema.safetensors", self._as_dit(ema), extra)
        # The train state carries its own copy of the weights: a kill between the writes cannot leave a
        # resumable state that disagrees with its weights.
        save_train_state(self._state_path(), {
            "step": self.step, "model": live, "ema": ema, "optimizer": optimizer,
            "config": to_dict(self.cfg), "dit_config": to_dict(self.dit_cfg), **more})
        plot_base_losses(self.run_dir / "log.jsonl", self.run_dir / "loss.png")

    def _write_sample(self) -> None:
        model = self._as_dit(self._full_states()[1])
        if model is None:
            return
        cfg, clip = self.cfg, self.sample_clip
        batch = self.sampler.assemble([Window(clip, 0)])
        model.eval()
        latents = generate(ConditionedDiT(model), self.flow, batch.cond, tuple(batch.x_0.shape), cfg.sample_steps,
                           cfg.sampler, GuidanceSpec(dict(cfg.guidance)), cfg.seed)
        rows = {r["id"]: r for r in read_manifest(self.data_dir)}
        write_sample(self.run_dir / "samples" / f"step_{self.step:06d}.mp4", latents, self.codec,
                     self.data_dir / rows[clip.id]["path"], start=0)

    # ---- steps ----
    def lr_at(self, step: int) -> float:
        """Linear warm-up, then cosine decay to ``lr * min_lr_ratio`` at ``steps``."""
        cfg = self.cfg
        if step <= cfg.warmup_steps:
            return cfg.lr * step / max(1, cfg.warmup_steps)
        t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))

    def global_batch(self, step: int):
        """Step ``step``'s whole batch, times and noise included (identical on every rank)."""
        batch = self.sampler.batch(step, self.cfg.batch)
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + step)
        batch.t = self.flow.sample_time(self.cfg.batch, g)
        batch.noise = torch.randn(batch.x_0.shape, generator=g)
        return batch

    def local_batch(self, step: int):
        """This rank's shard of step ``step``'s global batch, on the training device."""
        info = self.info
        batch = shard_batch(self.global_batch(step), info.rank, info.world_size)
        batch.x_0, batch.noise, batch.t = (batch.x_0.to(info.device), batch.noise.to(info.device),
                                           batch.t.to(info.device))
        batch.weights, batch.cond = batch.weights.to(info.device), batch.cond.to(info.device)
        return batch

    def _loss(self, step: int):
        with autocast(self.info.device, self.autocast_dtype):
            return self.flow.loss(self.model, self.local_batch(step))

    @torch.no_grad()
    def audio_gain(self, windows: int = 8, times: tuple[float, ...] = (0.3, 0.6)) -> float:
        """(loss with own voices shuffled across the batch - loss with the right ones) / the latter, on a fixed
        batch of speaking windows (no CFG dropout), at fixed times and noise; the same on every rank."""
        if self._audio_batch is None:
            self._audio_batch, _ = fixed_batch(self.sampler, self.train_clips, SPEAKING_MODES, windows, self.cfg.seed)
        b, device = self._audio_batch, self.info.device
        x_0, noise, weights, cond = b.x_0.to(device), b.noise.to(device), b.weights.to(device), b.cond.to(device)
        cond = dataclasses.replace(cond, motion=None, motion_from_audio=None)  # the track from audio, as at inference
        shuffled = dataclasses.replace(cond, mel_self=cond.mel_self.roll(1, 0))
        was_training = self.model.training
        self.model.eval()  # train mode drops the pose track at random between the two passes
        losses = {}
        with autocast(device, self.autocast_dtype):
            for name, c in (("right", cond), ("shuffled", shuffled)):
                losses[name] = sum(
                    self.flow.loss(self.model, Batch(x_0, c, weights, torch.full((len(x_0),), t, device=device),
                                                     noise)).loss.item() for t in times)
        self.model.train(was_training)
        return (losses["shuffled"] - losses["right"]) / max(losses["right"], 1e-12)

    @torch.no_grad()
    def audio_checks(self) -> dict[str, float]:
        """``lpm.training.diagnostics`` gaps (mouth error with own voices swapped, head error with partner voices
        swapped, mouth error with the true tracks swapped) in eval mode at high t; the same on every rank."""
        device = self.info.device
        if self._checks is None:
            self._checks = audio_checks(self.sampler, self.train_clips, self.cfg.seed)
            for check in self._checks:
                b = check.batch
                b.x_0, b.noise, b.cond = b.x_0.to(device), b.noise.to(device), b.cond.to(device)
                check.weights = check.weights.to(device)
        with autocast(device, self.autocast_dtype):
            return {check.name: gap(self.model, self.flow, check) for check in self._checks}

    @torch.no_grad()
    def batch_loss(self, step: int) -> float:
        """The loss of step ``step``'s global batch at the current weights (mean over ranks), no update."""
        return D.all_mean(self._loss(step).loss.item(), self.info)

    def train_step(self, step: int) -> dict[str, float]:
        """One optimizer step on this rank's shard of step ``step``'s batch."""
        cfg, info = self.cfg, self.info
        out = self._loss(step)
        self.opt.zero_grad(set_to_none=True)
        out.loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
        self.opt.step()
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(self.ema, self.params):
                e.lerp_(p.detach(), 1 - decay)
        return {"loss": D.all_mean(out.loss.item(), info), "grad_norm": float(D.full_tensor(grad_norm))}

    # ---- run ----
    def setup(self) -> None:
        """Load (or build) the latent cache, build and shard the model, resume if the run has a state."""
        cfg, info = self.cfg, self.info
        if info.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.json").write_text(json.dumps(to_dict(cfg), indent=1))
            # What the run was made from, so later stages (lpm distill) can default to the same data and VAE.
            vae = str(Path(self.vae_spec).resolve()) if Path(self.vae_spec).exists() else self.vae_spec
            sources = {"data": str(self.data_dir.resolve()), "vae": vae}
            (self.run_dir / "sources.json").write_text(json.dumps(sources, indent=1))
        self._load_data()
        self._build_model()
        if info.is_main:
            (self.run_dir / "dit_config.json").write_text(json.dumps(to_dict(self.dit_cfg), indent=1))
            print(f"Base DiT {self.num_params / 1e6:.2f}M params, {len(self.train_clips)} train clips, "
                  f"{cfg.frames} frames x {tuple(self.train_clips[0].latents.shape[1:])} latents, "
                  f"batch {cfg.batch} over {info.world_size} process(es), "
                  f"precision {self.autocast_dtype or 'fp32'}", flush=True)
        self._resume()

    def run(self) -> dict[str, Any]:
        """Train to ``cfg.steps`` (resuming), checkpointing and sampling on the way; returns the last figures."""
        cfg, info = self.cfg, self.info
        self.setup()
        self.model.train()
        log = (self.run_dir / "log.jsonl").open("a") if info.is_main else None
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=self.step, desc=self.progress_label, dynamic_ncols=True,
                   disable=not info.is_main)
        last = {}
        t_start = t_ckpt = t_step = time.perf_counter()
        while self.step < cfg.steps:
            self.step += 1
            lr = self.lr_at(self.step)
            for group in self.opt.param_groups:
                group["lr"] = lr
            last = self.train_step(self.step)
            now = time.perf_counter()
            row = {"step": self.step, **last, "lr": lr, "s_per_step": now - t_step}
            if cfg.audio_check_every and self.step % cfg.audio_check_every == 0:
                row["audio_gain"] = self.audio_gain()
                row.update(self.audio_checks())
            t_step = now
            if log is not None:
                log.write(json.dumps(row) + "\n")
                log.flush()
            bar.update(1)
            bar.set_postfix(loss=f"{last['loss']:.4f}")
            if cfg.sample_every and self.step % cfg.sample_every == 0:
                self._write_sample()
            due = self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps
            due = due or (now - t_ckpt) / 60 >= cfg.checkpoint_minutes
            stop = bool(cfg.max_minutes) and (now - t_start) / 60 >= cfg.max_minutes
            if info.distributed:  # rank 0's clock decides, so every rank enters the collectives together
                flags = torch.tensor([float(due), float(stop)], device=info.device)
                torch.distributed.broadcast(flags, 0)
                due, stop = bool(flags[0].item()), bool(flags[1].item())
            if due or stop:
                self._checkpoint()
                t_ckpt = time.perf_counter()
            if stop:
                if info.is_main:
                    print(f"\nstopped at step {self.step}: max_minutes {cfg.max_minutes} reached", flush=True)
                break
        bar.close()
        if log is not None:
            log.close()
        if not self._state_path().is_file():  # steps == 0: still leave usable weights
            self._checkpoint()
        D.shutdown(info)
        return {"step": self.step, **last, "params": self.num_params}


def load_base_config(preset_name: str, yaml_path: str | None, overrides: list[str]) -> BaseTrainConfig:
    """BaseTrainConfig with ``model`` from a DiT preset, then an optional YAML file and ``key=value`` overrides."""
    base = BaseTrainConfig(preset=preset_name, model=preset(preset_name))
    return load_config(BaseTrainConfig, base=base, yaml_path=yaml_path, overrides=overrides)
