"""``lpm distill dmd``: Distribution Matching Distillation on the student's own autoregressive rollouts.

DMD (Yin et al. 2024, "One-step Diffusion with Distribution Matching Distillation"; DMD2, Yin et al. 2024)
moves the generator's output distribution toward the teacher's by the difference of two scores at noised
versions of its samples: the *real* score (the frozen teacher, with classifier-free guidance) and the *fake*
score (a copy of the teacher trained online, by the flow-matching loss, on the generator's samples). In the
x0 parametrisation, at ``x_t = (1 - t) x + t eps``:

    grad = (x0_fake(x_t) - x0_real(x_t)) / mean|x - x0_real(x_t)|       (DMD eq. 7 with its weighting)
    loss = 0.5 || x - stopgrad(x - grad) ||^2                           (its gradient in x is ``grad``)

The samples are the student's own rollouts through its KV cache (Self-Forcing, Huang et al. 2025): chunk by
chunk, each from noise with the student's few steps, the clean chunk committed to the cache, the gradient
carried by one denoising step drawn per rollout (``lpm.distill.student.rollout``). The student thus learns on
the context it will really have when streaming, its own earlier output.

With ``regression > 0`` the generator's loss adds that multiple of the face-weighted squared error of the
rollout against the data window it was conditioned on (``face_weighted_error``): DMD's regression term
(DMD eq. 9), with the world's own frames as the paired target instead of teacher ODE outputs. Distribution
matching alone loses what the score difference does not see in a few hundred updates (the reference's
identity, the shut mouth of silence); the anchor keeps them while DMD sharpens.

With ``gan_weight > 0`` a critic on latent frames (``lpm.distill.critic``) learns, every iteration, to tell the
data window's clean latents from the (detached) rollout given the window's global reference, and the generator's
loss adds that multiple of its non-saturating GAN loss (DMD2's GAN term, against real data): where the anchor
pulls toward the data's mean, the critic pulls toward latents the data could have held.

Two-time-scale updates (DMD2): the fake score is updated every iteration, the generator every
``generator_every``-th, on a fresh rollout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from lpm.config import ConfigError, load_config, to_dict
from lpm.diffusion.cfg import GuidanceSpec, guided
from lpm.diffusion.flow import Batch, shift_time
from lpm.distill.critic import CriticConfig, LatentCritic, critic_loss, frames_and_references, generator_loss
from lpm.distill.student import face_weighted_error, rollout
from lpm.distill.trainer import DistillConfig, DistillTrainer, resolve_weights
from lpm.errors import LpmError
from lpm.models.dit import DiT, load_dit
from lpm.training import distributed as D
from lpm.training.base_batches import shard_batch
from lpm.training.conditioned import GLOBAL_REFERENCE, ConditionedDiT
from lpm.training.motion_expert import channel_weights, expert_error, load_expert, track_columns


@dataclass
class DmdConfig(DistillConfig):
    """``lpm distill dmd`` settings (the Base trainer's keys apply; ``lr`` is the generator's)."""

    steps: int = 300
    batch: int = 2
    lr: float = 2e-5
    warmup_steps: int = 0
    ema_decay: float = 0.99
    sample_every: int = 0
    # The student to start from (the ODE stage's run or weights); set by --student.
    student: str = ""
    # Update the generator every this many iterations; the fake score every iteration (DMD2's TTUR: 5).
    generator_every: int = 5
    # Learning rate of the fake score.
    fake_lr: float = 1e-4
    # Range of the noise level the scores are compared at (before the timestep shift).
    time_min: float = 0.02
    time_max: float = 0.98
    # Weight of the regression of the rollout onto its data window (0: pure DMD).
    regression: float = 0.0
    # A motion expert (``lpm train motion-expert``): a frozen reader of the track from a latent frame. With
    # ``expert_weight > 0`` the generator's loss adds that multiple of the reader's z-score error between the
    # rollout and the window's true track: the drawn motion is checked against what the track said.
    expert: str = ""
    expert_weight: float = 0.0
    # The track channels the expert's error counts (empty: every channel it reads).
    expert_channels: tuple[str, ...] = ()
    # An adversarial critic on latent frames (``lpm.distill.critic``): the generator's loss adds ``gan_weight``
    # times its GAN loss; the critic trains every iteration at ``gan_lr`` (Adam, betas 0 / 0.99), both sides seen
    # through instance noise of level up to ``gan_noise``; ``gan_width`` its first layer's channels.
    gan_weight: float = 0.0
    gan_lr: float = 2e-4
    gan_noise: float = 0.2
    gan_width: int = 64

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.regression < 0:
            raise ConfigError(f"regression must be >= 0, got {self.regression}")
        if self.expert_weight < 0:
            raise ConfigError(f"expert_weight must be >= 0, got {self.expert_weight}")
        if self.expert_weight > 0 and not self.expert:
            raise ConfigError("expert_weight > 0 needs expert=PATH (a motion expert: lpm train motion-expert)")
        if self.gan_weight < 0 or self.gan_lr <= 0 or self.gan_width < 1:
            raise ConfigError(f"gan_weight must be >= 0, gan_lr > 0 and gan_width >= 1, got {self.gan_weight}, "
                              f"{self.gan_lr}, {self.gan_width}")
        if not 0 <= self.gan_noise < 1:
            raise ConfigError(f"gan_noise must be in [0, 1), got {self.gan_noise}")


@dataclass
class DmdGradient:
    """The DMD update of a batch: ``loss`` (its gradient in ``x`` is ``grad``) and diagnostics."""

    loss: torch.Tensor
    grad: torch.Tensor
    real_x0: torch.Tensor
    fake_x0: torch.Tensor


def dmd_gradient(x: torch.Tensor, real_x0: torch.Tensor, fake_x0: torch.Tensor) -> DmdGradient:
    """``x (B, F, C, h, w)`` the generator's samples (with grad); the two scores' clean predictions at a noised
    ``x`` (no grad). Returns the surrogate loss whose gradient in ``x`` is the normalised score difference."""
    norm = (x.detach() - real_x0).abs().flatten(1).mean(1).clamp_min(1e-6)  # (B,)
    grad = (fake_x0 - real_x0) / norm.reshape(-1, *([1] * (x.dim() - 1)))
    target = (x - grad).detach()
    loss = 0.5 * (x - target).square().flatten(1).sum(1).mean() / x[0].numel()
    return DmdGradient(loss=loss, grad=grad, real_x0=real_x0, fake_x0=fake_x0)


class DmdDistiller(DistillTrainer):
    """One DMD run (see the module docstring)."""

    stage = "dmd"

    def _student_state(self, teacher: DiT) -> dict[str, torch.Tensor]:
        if not self.cfg.student:
            raise LpmError("lpm distill dmd needs --student (the ODE stage's run)")
        student = load_dit(resolve_weights(self.cfg.student, "student"))
        if student.cfg.expression_canvas and not self.dit_cfg.expression_canvas:
            raise LpmError(f"student {self.cfg.student} draws on the expression canvas: continue it with "
                           "expression_canvas=true")
        if student.cfg.expression_blend and not self.dit_cfg.expression_blend:
            raise LpmError(f"student {self.cfg.student} blends its expression canvas: continue it with "
                           "expression_blend=true")
        # The canvas adds no weights: a student with or without it fits a teacher without it.
        mine = {**vars(teacher.cfg), "attention": "block_causal", "expression_canvas": student.cfg.expression_canvas,
                "expression_blend": student.cfg.expression_blend}
        if vars(student.cfg) != mine:
            diff = sorted(k for k in mine if vars(student.cfg)[k] != mine[k])
            raise LpmError(f"student {self.cfg.student} is not a student of this teacher (config differs in {diff})")
        return student.state_dict()

    def _build_model(self) -> None:
        super()._build_model()
        cfg = self.cfg
        fake = load_dit(self.teacher_path)  # the fake score starts as the teacher (DMD2)
        self.fake = ConditionedDiT(fake).to(self.info.device).train()
        D.shard_model(self.fake, fake.blocks, self.info)
        self.fake_params = [p for p in self.fake.parameters() if p.requires_grad]
        self.fake_opt = torch.optim.AdamW(self.fake_params, lr=cfg.fake_lr, betas=cfg.betas,
                                          weight_decay=cfg.weight_decay)
        self.real = guided(self._x0_of(self.teacher), GuidanceSpec(dict(cfg.guidance)))
        self.expert = None
        if cfg.expert and cfg.expert_weight > 0:
            self.expert = load_expert(cfg.expert).to(self.info.device)
            shape = (self.dit_cfg.latent_channels, self.dit_cfg.latent_height, self.dit_cfg.latent_width)
            reads = (self.expert.cfg.latent_channels, *self.expert.latent_hw)
            if reads != shape:
                raise LpmError(f"motion expert {cfg.expert} reads latents {reads}, the student makes {shape}")
            self.expert_columns = track_columns(self.expert, tuple(self.dit_cfg.motion_channels))
            self.expert_weights = channel_weights(self.expert, tuple(cfg.expert_channels))
        self.critic = None
        if cfg.gan_weight > 0:  # small: replicated on every rank, its gradients averaged (``_critic_step``)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.seed)  # the same initial critic on every rank
                critic = LatentCritic(CriticConfig(self.dit_cfg.latent_channels, cfg.gan_width))
            self.critic = critic.to(self.info.device)
            self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=cfg.gan_lr, betas=(0.0, 0.99))

    def _x0_of(self, model: ConditionedDiT):
        def x0(x_t, t, cond):
            return self.flow.x0(model(x_t, t, cond).float(), x_t, t)

        return x0

    # ---- state of the fake score ----
    def _extra_state(self) -> dict[str, Any]:
        state = {"fake": D.full_state_dict(self.fake),
                 "fake_optimizer": self._optimizer_state(self.fake, self.fake_opt)}
        if self.critic is not None:
            state.update(critic=self.critic.state_dict(), critic_optimizer=self.critic_opt.state_dict())
        return state

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        if "fake" not in state:
            raise LpmError(f"{self.run_dir}: the train state has no fake score; not a DMD run")
        D.load_full_state_dict(self.fake, state["fake"])
        self._load_optimizer_state(state["fake_optimizer"] if self.info.is_main else {}, self.fake, self.fake_opt)
        if self.critic is not None:
            if "critic" not in state:
                raise LpmError(f"{self.run_dir}: the train state has no critic (the run started with gan_weight=0); "
                               f"continue it with gan_weight=0 or start a new --out from its weights")
            self.critic.load_state_dict(state["critic"])
            self.critic_opt.load_state_dict(state["critic_optimizer"])

    # ---- one iteration ----
    def _draws(self, step: int) -> dict[str, Any]:
        """Everything random of iteration ``step``, drawn for the global batch (so ranks agree)."""
        cfg = self.cfg
        batch = self.sampler.batch(step, cfg.batch)
        shape = tuple(batch.x_0.shape)
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        steps = len(self.times) - 1

        def times() -> torch.Tensor:
            u = cfg.time_min + (cfg.time_max - cfg.time_min) * torch.rand(cfg.batch, generator=g)
            return shift_time(u, cfg.flow.shift)

        return {"batch": batch, "shape": shape, "noise": torch.randn(shape, generator=g),
                "renoise": torch.randn((max(steps - 1, 0), *shape), generator=g),
                "exit_step": int(torch.randint(0, steps, (1,), generator=g)),
                "t_dmd": times(), "eps_dmd": torch.randn(shape, generator=g),
                "t_fake": times(), "eps_fake": torch.randn(shape, generator=g),
                # the critic's instance noise, real (0) and rollout (1) frames: levels (2, B, F), noise (2, *shape)
                "t_gan": torch.rand((2, *shape[:2]), generator=g) * cfg.gan_noise,
                "eps_gan": torch.randn((2, *shape), generator=g)}

    def _local(self, x: torch.Tensor, dim: int = 0) -> torch.Tensor:
        info = self.info
        n = x.shape[dim]
        return x.narrow(dim, info.rank * n // info.world_size, n // info.world_size).to(info.device)

    def _rollout(self, draws: dict[str, Any]) -> tuple[torch.Tensor, Batch]:
        """This rank's share of the iteration's student rollout ``video (B, F, C, h, w)`` and of its data batch
        (conditioning, clean latents, face weights)."""
        info = self.info
        batch = shard_batch(draws["batch"], info.rank, info.world_size)
        cond = batch.cond.to(info.device)
        shape = (batch.x_0.shape[0], *draws["shape"][1:])
        video = rollout(self.model, self.flow, cond, shape, self.times, self._local(draws["noise"]),
                        self._local(draws["renoise"], 1), draws["exit_step"], self.dit_cfg).video
        return video, Batch(x_0=batch.x_0.to(info.device), cond=cond, weights=batch.weights.to(info.device))

    def _fake_batch(self, draws: dict[str, Any], video: torch.Tensor, cond: Any) -> Batch:
        """The fake score's flow-matching batch on the (detached) rollout."""
        return Batch(x_0=video.detach(), cond=cond, t=self._local(draws["t_fake"]),
                     noise=self._local(draws["eps_fake"]))

    def train_step(self, step: int) -> dict[str, float]:
        cfg, info = self.cfg, self.info
        draws = self._draws(step)
        update_generator = step % cfg.generator_every == 0
        out: dict[str, float] = {}
        # 1. The student's own rollout (gradients only when the generator is updated).
        self.model.train()
        with torch.set_grad_enabled(update_generator):
            video, data = self._rollout(draws)
        cond = data.cond
        # 2. Generator: the DMD gradient at a noised copy of the rollout.
        if update_generator:
            t = self._local(draws["t_dmd"])
            tb = t.reshape(-1, 1, 1, 1, 1)
            x_t = (1 - tb) * video.detach() + tb * self._local(draws["eps_dmd"])
            with torch.no_grad():
                real_x0 = self.real(x_t, t, cond)
                fake_x0 = self._x0_of(self.fake)(x_t, t, cond)
            dmd = dmd_gradient(video, real_x0, fake_x0)
            loss = dmd.loss
            if cfg.regression > 0:
                regression = face_weighted_error(video.float(), data.x_0, data.weights).mean()
                loss = loss + cfg.regression * regression
                out["regression"] = D.all_mean(regression.item(), info)
            if self.critic is not None:
                gan = generator_loss(self.critic, *self._critic_inputs(draws, video.float(), cond, 1))
                loss = loss + cfg.gan_weight * gan
                out["gan_generator"] = D.all_mean(gan.item(), info)
            if self.expert is not None:
                expert, floor = self._expert_error(video, data)
                loss = loss + cfg.expert_weight * expert
                out["expert"] = D.all_mean(expert.item(), info)
                out["expert_floor"] = D.all_mean(floor, info)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
            self.opt.step()
            updates = step // cfg.generator_every  # the EMA warms up over generator updates, as in BaseTrainer
            decay = min(cfg.ema_decay, (1 + updates) / (10 + updates))
            with torch.no_grad():
                for e, p in zip(self.ema, self.params):
                    e.lerp_(p.detach(), 1 - decay)
            out["dmd_loss"] = D.all_mean(dmd.loss.item(), info)
            out["grad_norm"] = float(D.full_tensor(norm))
            out["score_gap"] = D.all_mean(dmd.grad.abs().mean().item(), info)
        # 3. Fake score: flow matching on the (detached) rollout.
        fake_loss = self.flow.loss(self.fake, self._fake_batch(draws, video, cond)).loss
        self.fake_opt.zero_grad(set_to_none=True)
        fake_loss.backward()
        fake_norm = torch.nn.utils.clip_grad_norm_(self.fake_params, cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
        self.fake_opt.step()
        out["fake_loss"] = D.all_mean(fake_loss.item(), info)
        out["fake_grad_norm"] = float(D.full_tensor(fake_norm))
        if self.critic is not None:
            out.update(self._critic_step(draws, video, data))
        out["loss"] = out["fake_loss"]  # logged every iteration; the generator's figures on its steps
        out.setdefault("grad_norm", out["fake_grad_norm"])
        return out

    def _critic_inputs(self, draws: dict[str, Any], video: torch.Tensor, cond: Any, side: int
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """``video (B, F, C, h, w)`` (this rank's) under the iteration's instance noise of ``side`` (0 real,
        1 rollout), as critic inputs: frames and their references, both ``(B * F, C, h, w)``."""
        t = self._local(draws["t_gan"][side]).to(video)[..., None, None, None]
        noised = (1 - t) * video + t * self._local(draws["eps_gan"][side]).to(video)
        return frames_and_references(noised, cond.references[GLOBAL_REFERENCE].to(video))

    def _critic_step(self, draws: dict[str, Any], video: torch.Tensor, data: Batch) -> dict[str, float]:
        """One update of the critic: the data window's latents against the (detached) rollout."""
        info = self.info
        real, refs = self._critic_inputs(draws, data.x_0.float(), data.cond, 0)
        fake, _ = self._critic_inputs(draws, video.detach().float(), data.cond, 1)
        loss, real_acc, fake_acc = critic_loss(self.critic, real, fake, refs)
        self.critic_opt.zero_grad(set_to_none=True)  # also drops what the generator's loss left in it
        loss.backward()
        if info.distributed:  # replicated: average the gradients so every rank takes the same step
            for p in self.critic.parameters():
                if p.grad is not None:
                    torch.distributed.all_reduce(p.grad)
                    p.grad /= info.world_size
        self.critic_opt.step()
        return {"critic_loss": D.all_mean(loss.item(), info), "critic_real_acc": D.all_mean(real_acc, info),
                "critic_fake_acc": D.all_mean(fake_acc, info)}

    def _expert_error(self, video: torch.Tensor, data: Batch) -> tuple[torch.Tensor, float]:
        """The motion expert's error on the rollout (with grad) and, as its floor, on the data window itself."""
        cond = data.cond
        if cond.motion is None:
            raise LpmError("expert_weight needs clips with a true motion track (world clips)")
        track = cond.motion[..., self.expert_columns]
        ref = None
        if self.expert.cfg.reference:
            kind = self.expert.cfg.reference_kind
            if kind not in cond.references:  # the global one is always there; others may be dropped (CFG)
                raise LpmError(f"the motion expert reads the {kind!r} reference, which this batch does not carry "
                               f"(it has {sorted(cond.references)}); train the expert with reference_kind=global")
            ref = cond.references[kind]
        err = expert_error(self.expert, video, track, ref, self.expert_weights).mean()
        with torch.no_grad():
            floor = expert_error(self.expert, data.x_0, track, ref, self.expert_weights).mean().item()
        return err, floor

    @torch.no_grad()
    def batch_loss(self, step: int) -> float:
        """The fake score's loss on iteration ``step``'s rollout, no update (ranks averaged)."""
        draws = self._draws(step)
        video, data = self._rollout(draws)
        return D.all_mean(self.flow.loss(self.fake, self._fake_batch(draws, video, data.cond)).loss.item(), self.info)


def load_dmd_config(yaml_path: str | None, overrides: list[str]) -> DmdConfig:
    """DmdConfig from an optional YAML file and ``key=value`` overrides."""
    cfg = load_config(DmdConfig, base=DmdConfig(), yaml_path=yaml_path, overrides=overrides)
    to_dict(cfg)  # every key serialisable (it is saved with the run)
    return cfg
