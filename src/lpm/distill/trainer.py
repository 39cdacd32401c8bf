"""What the distillation stages share: a frozen teacher, a block-causal student initialised from weights,
the student's few times, Online metadata on every export, and rollout samples.

Both stages are ``BaseTrainer`` runs (same data windows, resume, checkpoints, log, torchrun + FSDP2), with
the student as the trained model: ``lpm.distill.ode`` regresses it onto teacher trajectories,
``lpm.distill.dmd`` trains it with distribution matching on its own rollouts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lpm.config import ConfigError, from_dict
from lpm.data.clip import read_manifest
from lpm.diffusion.flow import FlowConfig, FlowMatching
from lpm.distill.student import rollout, student_times
from lpm.errors import LpmError
from lpm.models.dit import DiT, load_dit
from lpm.models.dit_config import stored_dit_config
from lpm.models.export import dit_weights_of
from lpm.models.motion_track import SPEECH_PREFIX, speech_settings, widen_track
from lpm.training import distributed as D
from lpm.training.base_batches import Window
from lpm.training.base_samples import write_sample
from lpm.training.base_trainer import BaseTrainConfig, BaseTrainer
from lpm.training.checkpoint import read_metadata
from lpm.training.conditioned import ConditionedDiT
from lpm.training.speech_trainer import load_speech_into
from lpm.training.warp_fit import fit_reference_warp, warp_fit_data

ONLINE_SAMPLER = "renoise"  # lpm.diffusion.samplers key of the students' few-step sampler


@dataclass
class DistillConfig(BaseTrainConfig):
    """Keys every distillation stage reads (on top of the Base trainer's)."""

    # The teacher's weights: a Base run directory (its dit_ema.safetensors) or a .safetensors file.
    teacher: str = ""
    # Denoising steps per chunk of the Online student (LPM 1.0: 2).
    student_steps: int = 2
    # The Base trainer's audio check measures a bidirectional denoiser; students are rated by the bench instead.
    audio_check_every: int = 0
    # Give the student the global reference's token path (``DiTConfig.reference_concat``) if its initial weights
    # lack it: the path starts at zero, so the student starts as the weights it is initialised from.
    reference_concat: bool = False
    # Make the student predict the frame as the global reference plus a residual (``DiTConfig.reference_residual``):
    # if its initial weights lack it, their head restarts at zero and the student starts as the still reference.
    reference_residual: bool = False
    # Move that reference to each frame's head pose (``DiTConfig.reference_warp``; the identity at init).
    reference_warp: bool = False
    # Draw each frame on the exemplar of its track's emotion instead of the global reference
    # (``DiTConfig.expression_canvas``; no new weights: the student starts from the same ones).
    expression_canvas: bool = False
    # ... moved toward that exemplar by the emotion's strength instead (``DiTConfig.expression_blend``).
    expression_blend: bool = False
    # A new warp is first fitted alone on the training clips' latents for this many Adam steps
    # (lpm.training.warp_fit); 0 = it starts as the identity.
    warp_fit_steps: int = 300
    # Train the warp with the model (False: it stays as fitted). Trained from a residual head that already
    # compensates the still reference, the fitted pose matrices fell back to ~0 within 150 steps.
    warp_trainable: bool = False


def resolve_weights(spec: str, what: str) -> Path:
    """A run directory (its ``dit_ema.safetensors``, else ``dit.safetensors``) or a checkpoint file; errors name
    the role (``what``: teacher, student)."""
    try:
        return dit_weights_of(spec)
    except LpmError as e:
        raise LpmError(f"{what}: {e}") from None


def teacher_cache(weights: Path) -> str:
    """The latent cache of the teacher's run, if there is one: encoding the data again would take minutes."""
    run = weights.parent
    try:
        import json

        given = json.loads((run / "config.json").read_text()).get("cache_dir")
    except (OSError, ValueError):
        given = None
    folder = Path(given) if given else run / "cache"
    return str(folder) if folder.is_dir() else ""


class DistillTrainer(BaseTrainer):
    """A ``BaseTrainer`` whose model is a block-causal student of a frozen teacher.

    Args:
        cfg: the stage's config (``teacher`` set).
        data_dir, vae, run_dir: as for ``BaseTrainer``.
    """

    stage = ""  # "ode" or "dmd": recorded in the exported metadata

    @property
    def progress_label(self) -> str:
        return f"distill {self.stage}"

    def __init__(self, cfg: DistillConfig, data_dir: str | Path, vae: str, run_dir: str | Path) -> None:
        if cfg.init:
            raise ConfigError("init is a key of `lpm train base`: a student starts from its teacher's weights "
                              "(the DMD stage from --student)")
        self.teacher_path = resolve_weights(cfg.teacher, "teacher")
        meta = read_metadata(self.teacher_path)
        flow = ((meta.get("extra") or {}).get("train_config") or {}).get("flow")
        # The student inherits the teacher's objective (parametrisation and shift) and network shape (the
        # latent cache is keyed on its mel features, so the shape is set before the data is read).
        cfg = dataclasses.replace(cfg, teacher=str(self.teacher_path), model=stored_dit_config(meta["config"]),
                                  flow=from_dict(FlowConfig, flow) if isinstance(flow, dict) else cfg.flow,
                                  cache_dir=cfg.cache_dir or teacher_cache(self.teacher_path))
        super().__init__(cfg, data_dir, vae, run_dir)
        self.flow = FlowMatching(cfg.flow)
        self.times = student_times(cfg.student_steps, cfg.flow.shift)

    # ---- models ----
    def _student_state(self, teacher: DiT) -> dict[str, torch.Tensor]:
        """Initial student weights: the teacher's (CausVid); the DMD stage starts from the ODE student."""
        return teacher.state_dict()

    def _build_model(self) -> None:
        cfg, info = self.cfg, self.info
        teacher = load_dit(self.teacher_path)
        c, h, w = self.train_clips[0].latents.shape[1:]
        tc = teacher.cfg
        takes = (tc.latent_channels, tc.latent_height, tc.latent_width)
        if takes != (c, h, w):
            raise LpmError(f"teacher {self.teacher_path} takes latents {takes}, the data's are {(c, h, w)}: "
                           "a different VAE or resolution")
        if cfg.frames % tc.frames_per_chunk:
            raise LpmError(f"frames {cfg.frames} is not a multiple of the chunk ({tc.frames_per_chunk} frames)")
        residual = tc.reference_residual or cfg.reference_residual
        if residual and cfg.flow.parametrisation != "x0":
            raise ConfigError(f"reference_residual adds the reference to a predicted frame: the teacher's objective "
                              f"predicts {cfg.flow.parametrisation!r}, not 'x0'")
        # ``speech=``: the student takes that speech network, and with it its track's layout (channels, caption).
        swap = speech_settings(cfg.speech) if cfg.speech else {}
        if swap and not tc.motion_channels:
            raise LpmError(f"teacher {self.teacher_path} has no motion track: speech={cfg.speech} has no track to "
                           "replace")
        self.dit_cfg = dataclasses.replace(tc, attention="block_causal",
                                           reference_concat=tc.reference_concat or cfg.reference_concat,
                                           reference_residual=residual,
                                           reference_warp=tc.reference_warp or cfg.reference_warp,
                                           expression_canvas=tc.expression_canvas or cfg.expression_canvas,
                                           expression_blend=tc.expression_blend or cfg.expression_blend, **swap)
        self.cfg = dataclasses.replace(cfg, model=self.dit_cfg)
        student = DiT(self.dit_cfg)
        initial = self._student_state(teacher)
        new = ("reference_in.", "reference_warp.")
        if swap:  # the teacher's track weights re-laid for the new channels (added ones at zero)
            initial = widen_track(initial, tc.motion_channels, self.dit_cfg.motion_channels)
            new += (SPEECH_PREFIX,)
        missing, unexpected = student.load_state_dict(initial, strict=False)
        if unexpected or any(not k.startswith(new) for k in missing):
            raise LpmError(f"the student's initial weights do not fit it: missing {missing}, unexpected {unexpected}")
        fresh = not self._state_path().is_file()  # a resumed run loads all of these from its train state
        if swap and fresh:
            load_speech_into(student.speech_motion, cfg.speech, self.dit_cfg)
        if residual and not tc.reference_residual and fresh:  # the teacher's head predicts whole frames
            student.restart_head()
        if self.dit_cfg.reference_warp and not tc.reference_warp and cfg.warp_fit_steps > 0 and fresh:
            data = warp_fit_data(self.train_clips, self.dit_cfg.motion_channels, seed=cfg.seed)
            fit = fit_reference_warp(student.reference_warp, *data, steps=cfg.warp_fit_steps)
            if info.is_main:
                print(f"reference_warp fitted on {fit.clips} clips x {fit.frames} frames: the warped reference's "
                      f"error is {fit.relative_error:.3f} of the still reference's", flush=True)
        if self.dit_cfg.reference_warp and not cfg.warp_trainable:
            student.reference_warp.requires_grad_(False)
        self.export_dit = DiT(self.dit_cfg) if info.is_main else None
        # As the Base: windows carry their true motion track (teacher pairs render it; the student sees the
        # speech network's prediction for ``predicted_motion`` of its samples), the mouth weighted up.
        self.sampler = self._window_sampler(student)
        self._freeze_speech(student)
        self.teacher = self._frozen(teacher)
        self.model = ConditionedDiT(student).to(info.device)
        D.shard_model(self.model, student.blocks, info)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.ema = [p.detach().clone() for p in self.params]
        self.opt = torch.optim.AdamW(self.params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
        self.num_params = sum(p.numel() for p in student.parameters())

    def _frozen(self, dit: DiT) -> ConditionedDiT:
        """A model that is only evaluated (teacher), sharded like the student."""
        model = ConditionedDiT(dit).to(self.info.device).eval().requires_grad_(False)
        D.shard_model(model, dit.blocks, self.info)
        return model

    # ---- outputs ----
    def _checkpoint_extra(self) -> dict[str, Any]:
        return {"stage": self.stage, "teacher": str(self.teacher_path),
                "online": {"timesteps": self.times, "sampler": ONLINE_SAMPLER, "refiner_time": None}}

    @torch.no_grad()
    def _write_sample(self) -> None:
        model = self._as_dit(self._full_states()[1])
        if model is None:
            return
        clip = self.sample_clip
        batch = self.sampler.assemble([Window(clip, 0)])
        shape = tuple(batch.x_0.shape)
        g = torch.Generator().manual_seed(self.cfg.seed)
        noise = torch.randn(shape, generator=g)
        renoise = torch.randn((len(self.times) - 2, *shape), generator=g)
        model.eval()
        video = rollout(ConditionedDiT(model), self.flow, batch.cond, shape, self.times, noise, renoise, None,
                        self.dit_cfg).video
        rows = {r["id"]: r for r in read_manifest(self.data_dir)}
        write_sample(self.run_dir / "samples" / f"step_{self.step:06d}.mp4", video, self.codec,
                     self.data_dir / rows[clip.id]["path"], start=0)

