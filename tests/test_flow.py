"""Flow matching maths, samplers on known fields, classifier-free guidance combination."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lpm.diffusion import (
    Batch,
    FlowConfig,
    FlowMatching,
    GuidanceSpec,
    combine,
    flow_timesteps,
    guided,
    sample_euler,
    sample_heun,
    sample_renoise,
    shift_time,
)
from lpm.training.conditioned import ConditionBatch

SHAPE = (3, 2, 4, 5, 5)  # (B, F, C, h, w)


def test_path_endpoints_and_target():
    g = torch.Generator().manual_seed(0)
    x_0, noise = torch.randn(SHAPE, generator=g), torch.randn(SHAPE, generator=g)
    flow = FlowMatching()
    assert torch.equal(flow.path(x_0, torch.zeros(3), noise).x_t, x_0)  # t = 0 is clean
    assert torch.equal(flow.path(x_0, torch.ones(3), noise).x_t, noise)  # t = 1 is noise
    t = torch.tensor([0.2, 0.5, 0.9])
    p = flow.path(x_0, t, noise)
    assert torch.allclose(p.target, noise - x_0)
    dt = 1e-3  # the target is the time derivative of the path
    numeric = (flow.path(x_0, t + dt, noise).x_t - p.x_t) / dt
    assert torch.allclose(numeric, p.target, atol=1e-3)


def test_timestep_shift_monotone_with_fixed_endpoints():
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    for s in (0.5, 1.0, 3.0, 7.0):
        u = shift_time(t, s)
        assert u[0] == 0 and u[-1] == 1
        assert (u.diff() > 0).all()
    assert torch.allclose(shift_time(t, 1.0), t)
    assert (shift_time(t, 3.0) >= t).all()  # s > 1 moves time toward noise
    ts = flow_timesteps(6, shift=3.0)
    assert ts.shape == (7,) and ts[0] == 1 and ts[-1] == 0 and (ts.diff() < 0).all()


@pytest.mark.parametrize("parametrisation", ["velocity", "x0"])
def test_oracle_model_has_zero_loss(parametrisation):
    g = torch.Generator().manual_seed(1)
    x_0, noise = torch.randn(SHAPE, generator=g), torch.randn(SHAPE, generator=g)
    flow = FlowMatching(FlowConfig(parametrisation=parametrisation, shift=3.0))
    t = torch.tensor([0.1, 0.5, 0.95])

    def oracle(x_t, t_in, cond):
        return noise - x_0 if parametrisation == "velocity" else x_0

    out = flow.loss(oracle, Batch(x_0=x_0, cond=None, t=t, noise=noise))
    assert out.loss.item() < 1e-10 and out.per_sample.shape == (3,)
    assert flow.sample_time(1000, torch.Generator().manual_seed(0)).min() >= 0


def test_weighted_loss_normalised_per_sample():
    g = torch.Generator().manual_seed(2)
    x_0, noise = torch.randn(SHAPE, generator=g), torch.randn(SHAPE, generator=g)
    flow = FlowMatching(FlowConfig(parametrisation="velocity"))
    t = torch.full((3,), 0.5)
    zero = lambda x_t, t_in, cond: torch.zeros_like(x_t)  # noqa: E731
    plain = flow.loss(zero, Batch(x_0, None, None, t, noise)).per_sample
    ones = torch.full((3, 2, 5, 5), 7.0)  # a constant weight map changes nothing
    assert torch.allclose(flow.loss(zero, Batch(x_0, None, ones, t, noise)).per_sample, plain)
    mask = torch.zeros(3, 2, 5, 5)
    mask[:, :, 0, 0] = 1  # all weight on one cell: the loss is that cell's error
    cell = (noise - x_0).square().mean(2)[:, :, 0, 0].mean(1)
    assert torch.allclose(flow.loss(zero, Batch(x_0, None, mask, t, noise)).per_sample, cell)


@pytest.mark.parametrize("sampler", [sample_euler, sample_heun])
def test_samplers_integrate_gaussian_to_point_path_exactly(sampler):
    # The straight path from any noise to the point x_star has the velocity (x - x_star) / t everywhere on it.
    g = torch.Generator().manual_seed(3)
    x_star, noise = torch.randn(SHAPE, generator=g, dtype=torch.float64), torch.randn(SHAPE, generator=g,
                                                                                      dtype=torch.float64)

    def velocity(x, t, cond):
        return (x - x_star) / t.to(x).reshape(-1, 1, 1, 1, 1)

    # End at t = 0.01: the field is 0 / 0 at the point itself, where Heun's corrector would evaluate it.
    ts = 0.01 + 0.99 * flow_timesteps(5, shift=3.0).double()
    out = sampler(velocity, noise, ts)
    assert torch.allclose(out, x_star + 0.01 * (noise - x_star), atol=1e-9)  # on the path, at t = 0.01
    if sampler is sample_euler:  # Euler never evaluates at its last time: it lands on the point itself
        assert torch.allclose(sampler(velocity, noise, flow_timesteps(5, shift=3.0).double()), x_star, atol=1e-9)


def test_renoise_sampler_predicts_the_point_and_draws_fresh_noise_between_steps():
    g = torch.Generator().manual_seed(4)
    x_star, noise = torch.randn(SHAPE, generator=g, dtype=torch.float64), torch.randn(SHAPE, generator=g,
                                                                                      dtype=torch.float64)
    seen = []

    def velocity(x, t, cond):
        seen.append((x.clone(), float(t[0])))
        return (x - x_star) / t.to(x).reshape(-1, 1, 1, 1, 1)

    ts = flow_timesteps(2, shift=3.0).double()
    out = sample_renoise(velocity, noise, ts, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(out, x_star, atol=1e-9)
    (x1, t1), (x_mid, t_mid) = seen
    assert t1 == 1.0 and 0 < t_mid < 1
    eps = (x_mid - (1 - t_mid) * x_star) / t_mid  # the noise the second input was made of
    assert not torch.allclose(eps, noise)  # fresh, not the starting noise (that would be an Euler step)
    assert abs(float(eps.std()) - 1.0) < 0.5


def test_heun_exact_on_time_linear_field_euler_not():
    a, b = torch.tensor([0.3]), torch.tensor([2.0])
    velocity = lambda x, t, cond: (a + b * t.to(x)).reshape(-1, 1)  # noqa: E731  dx/dt = a + b t
    x1 = torch.tensor([[1.0]], dtype=torch.float64)
    exact = x1 - (a + b / 2)  # x(0) = x(1) - int_0^1 (a + b t) dt
    ts = flow_timesteps(4).double()
    assert torch.allclose(sample_heun(velocity, x1, ts), exact.double())
    assert not torch.allclose(sample_euler(velocity, x1, ts), exact.double())


def _cond(batch=2) -> ConditionBatch:
    return ConditionBatch(
        captions=["hi"] * batch, mel_self=torch.ones(batch, 5, 4, 3), mel_partner=torch.ones(batch, 5, 4, 3) * 2,
        audio_start_frame=-1,
        references={"global": torch.ones(batch, 4, 2, 2), "expr_happy": torch.ones(batch, 4, 2, 2)},
        pose=None, silent_mel=-13.8)


def test_condition_batch_without():
    cond = _cond()
    assert cond.without({"text"}).captions == ["", ""]
    assert (cond.without({"audio_self"}).mel_self == -13.8).all()
    assert torch.equal(cond.without({"audio_self"}).mel_partner, cond.mel_partner)
    assert list(cond.without({"references"}).references) == ["global"]
    assert cond.captions == ["hi", "hi"] and (cond.mel_self == 1).all()  # the original is untouched
    assert len(cond.select(slice(1, 2))) == 1


def test_cfg_combination():
    v_c, v_t, v_a = torch.tensor([1.0]), torch.tensor([0.5]), torch.tensor([-1.0])
    assert torch.equal(combine(v_c, {}, {}), v_c)
    # One condition: the classic v_u + s (v_c - v_u).
    assert torch.allclose(combine(v_c, {"text": v_t}, {"text": 3.0}), v_t + 3.0 * (v_c - v_t))
    both = combine(v_c, {"text": v_t, "audio_self": v_a}, {"text": 2.0, "audio_self": 4.0})
    assert torch.allclose(both, v_c + 1.0 * (v_c - v_t) + 3.0 * (v_c - v_a))
    with pytest.raises(ValueError):
        GuidanceSpec({"colour": 2.0})

    # The wrapper drops exactly the guided condition in each extra call.
    def velocity(x, t, cond):
        return x * 0 + float(cond.captions[0] == "hi") + 10 * float((cond.mel_self != -13.8).all())

    spec = GuidanceSpec({"text": 2.0, "audio_self": 1.5, "audio_partner": 1.0})
    assert spec.guided == ["text", "audio_self"]
    x = torch.zeros(2, 1)
    out = guided(velocity, spec)(x, torch.ones(2), _cond())
    assert torch.allclose(out, torch.full((2, 1), 11.0 + 1.0 * (11 - 10) + 0.5 * (11 - 1)))
    assert torch.equal(guided(velocity, GuidanceSpec())(x, torch.ones(2), _cond()), torch.full((2, 1), 11.0))
    assert dataclasses.is_dataclass(spec)
