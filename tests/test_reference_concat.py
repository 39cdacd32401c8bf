"""``reference_concat``: the global reference's latent added token by token (an image-to-video model's channel
concatenation). Zero at init (a checkpoint without it loads and predicts the same), used when trained, streamed
from the KV cache equal to the full forward, and a clear error without a global reference."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lpm.models.conditioning import References
from lpm.models.dit import DiT
from test_dit import make_inputs, make_model, micro, stream


def test_zero_init_equals_the_model_without_it_and_trained_weights_use_the_reference():
    with_concat = make_model(micro(reference_concat=True))
    fresh = DiT(micro(reference_concat=True)).reference_in
    assert not fresh.weight.any() and not fresh.bias.any()  # a fresh model starts without the path
    with torch.no_grad():  # make_model perturbs every weight: zero it as a fresh init does
        with_concat.reference_in.weight.zero_()
        with_concat.reference_in.bias.zero_()
    without = make_model(micro())
    without.load_state_dict({k: v for k, v in with_concat.state_dict().items() if not k.startswith("reference_in.")})
    x, t, cond = make_inputs(with_concat)
    with torch.no_grad():
        assert torch.equal(with_concat(x, t, cond), without(x, t, cond))
        torch.nn.init.normal_(with_concat.reference_in.weight, 0, 0.1)
        base = with_concat(x, t, cond)
        other = References([r.clone() for r in cond.references.latents], list(cond.references.kinds))
        other.latents[0] = other.latents[0] + 1.0  # another global reference
        assert (with_concat(x, t, dataclasses.replace(cond, references=other)) - base).abs().max() > 1e-4
    with_concat(x, t, cond).square().mean().backward()  # and it trains (the uncached forward keeps the graph)
    assert with_concat.reference_in.weight.grad.abs().sum() > 0


def test_streaming_takes_the_reference_from_the_cache_and_equals_the_full_forward():
    model = make_model(micro(reference_concat=True))
    with torch.no_grad():
        torch.nn.init.normal_(model.reference_in.weight, 0, 0.1)
    x, t, cond = make_inputs(model)
    with torch.no_grad():
        full = model(x, t, cond)
    streamed = stream(model, x, t, cond)
    assert (streamed - full).abs().max() <= 1e-10 * full.abs().max()


def test_a_missing_or_misshapen_global_reference_is_a_clear_error():
    model = make_model(micro(reference_concat=True))
    x, t, cond = make_inputs(model)
    refs = cond.references
    no_global = References(refs.latents[1:], refs.kinds[1:])
    with pytest.raises(ValueError, match="global reference"):
        model(x, t, dataclasses.replace(cond, references=no_global))
    small = References([refs.latents[0][..., :4, :4], *refs.latents[1:]], list(refs.kinds))
    with pytest.raises(ValueError, match="not a frame's latent"):
        model(x, t, dataclasses.replace(cond, references=small))


def test_reference_residual_starts_as_the_still_reference_and_streams_equal_to_the_full_forward():
    model = make_model(micro(reference_residual=True))
    x, t, cond = make_inputs(model)
    ref = cond.references.latents[cond.references.kinds.index("global")]
    with torch.no_grad():
        out = model(x, t, cond)
        model.restart_head()  # as a fresh model or a fine-tune from weights without it: the still reference
        still = model(x, t, cond)
    assert (out - ref[:, None]).abs().max() > 1e-3  # the perturbed head adds something of its own
    assert torch.equal(still, ref[:, None].expand_as(still))
    model = make_model(micro(reference_residual=True, reference_concat=True))
    with torch.no_grad():
        full = model(x, t, cond)
    streamed = stream(model, x, t, cond)
    assert (streamed - full).abs().max() <= 1e-6 * full.abs().max()
    no_global = References(cond.references.latents[1:], cond.references.kinds[1:])
    with pytest.raises(ValueError, match="reference_residual needs the global reference"):
        make_model(micro(reference_residual=True))(x, t, dataclasses.replace(cond, references=no_global))
