"""The DMD critic (``lpm.distill.critic``): shapes and errors, it learns to tell two constructed distributions
apart, its generator loss moves fakes toward the real side, and ``lpm distill dmd gan_weight=`` logs, plots and
resumes it."""

from __future__ import annotations

import json
import math

import pytest
import torch

from lpm.config import ConfigError
from lpm.distill.critic import (
    CriticConfig,
    LatentCritic,
    critic_loss,
    frames_and_references,
    generator_loss,
)
from lpm.distill.dmd import DmdDistiller, load_dmd_config
from lpm.distill.ode import OdeDistiller, load_ode_config
from test_distill import TRAIN_KEYS, world  # noqa: F401  (the module fixture: data, VAE, a Base run)


def test_critic_shapes_and_bad_input():
    critic = LatentCritic(CriticConfig(latent_channels=4, width=8))
    assert critic(torch.zeros(3, 4, 8, 8), torch.zeros(3, 4, 8, 8)).shape == (3, 4, 4)
    with pytest.raises(ValueError, match="references"):
        critic(torch.zeros(3, 4, 8, 8), torch.zeros(2, 4, 8, 8))
    video, refs = torch.randn(2, 5, 4, 8, 8), torch.randn(2, 4, 8, 8)
    frames, r = frames_and_references(video, refs)
    assert frames.shape == r.shape == (10, 4, 8, 8)
    assert torch.equal(frames[7], video[1, 2]) and torch.equal(r[7], refs[1])


def _sharp_and_blurred(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Real: high-frequency checkerboards of random contrast; fake: the same, 2x2-averaged (a blurred copy)."""
    board = ((torch.arange(8)[:, None] + torch.arange(8)[None]) % 2).float() * 2 - 1
    real = torch.rand(n, 4, 1, 1, generator=gen) * board
    fake = torch.nn.functional.avg_pool2d(real, 2).repeat_interleave(2, -1).repeat_interleave(2, -2)
    return real, fake + 0.3 * torch.rand(n, 4, 1, 1, generator=gen)


def test_critic_learns_sharp_from_blurred_and_its_gradient_sharpens():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    critic = LatentCritic(CriticConfig(latent_channels=4, width=16))
    opt = torch.optim.Adam(critic.parameters(), lr=2e-3, betas=(0.0, 0.99))
    refs = torch.zeros(32, 4, 8, 8)
    for _ in range(150):
        real, fake = _sharp_and_blurred(32, gen)
        loss, real_acc, fake_acc = critic_loss(critic, real, fake, refs)
        opt.zero_grad()
        loss.backward()
        opt.step()
    real, fake = _sharp_and_blurred(32, gen)
    loss, real_acc, fake_acc = critic_loss(critic, real, fake, refs)
    assert loss.item() < 0.5 * math.log(4) and real_acc > 0.9 and fake_acc > 0.9, (loss, real_acc, fake_acc)
    # A generator step on the fakes lowers the generator's loss, and the critic's gradient alone is what moves it.
    fake = fake.clone().requires_grad_(True)
    before = generator_loss(critic, fake, refs)
    before.backward()
    critic.eval()  # no power-iteration update between the two reads
    with torch.no_grad():
        after = generator_loss(critic, fake - 0.5 * fake.grad / fake.grad.abs().max(), refs)
        again = generator_loss(critic, fake, refs)
    assert after < again


def test_dmd_with_critic_logs_plots_and_validates(world, tmp_path):  # noqa: F811
    data, vae, base = world
    ode = tmp_path / "ode"
    OdeDistiller(load_ode_config(None, [*TRAIN_KEYS, f"teacher={base}", "target=data", "steps=1"]),
                 data, str(vae), ode).run()
    run = tmp_path / "dmd"
    keys = [*TRAIN_KEYS, f"teacher={base}", f"student={ode}", "steps=2", "batch=2", "generator_every=2",
            "gan_weight=0.1", "checkpoint_every=2"]
    DmdDistiller(load_dmd_config(None, keys), data, str(vae), run).run()
    rows = [json.loads(r) for r in (run / "log.jsonl").read_text().splitlines()]
    assert all(0 <= r["critic_real_acc"] <= 1 and math.isfinite(r["critic_loss"]) for r in rows)
    assert ["gan_generator" in r for r in rows] == [False, True]  # with the generator's update only
    assert (run / "loss.png").is_file()
    state = torch.load(run / "train_state.pt", weights_only=False)
    assert "critic" in state and "critic_optimizer" in state
    # Resumed with the critic: it continues from the saved one (one more step, both logged).
    more = load_dmd_config(None, [k if not k.startswith("steps=") else "steps=3" for k in keys])
    trainer = DmdDistiller(more, data, str(vae), run)
    trainer.setup()
    saved = state["critic"]
    assert all(torch.equal(v, trainer.critic.state_dict()[k]) for k, v in saved.items())
    for bad in ("gan_weight=-1", "gan_noise=1.0", "gan_lr=0"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            load_dmd_config(None, [*TRAIN_KEYS, f"teacher={base}", bad])
