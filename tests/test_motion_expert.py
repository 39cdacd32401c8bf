"""The motion expert: it learns a reading that is there, its error and gradient, its file, and the DMD loss."""

from __future__ import annotations

import json
import math

import pytest
import torch

from base_fixtures import MICRO, make_dataset, make_vae
from lpm.config import ConfigError
from lpm.distill.dmd import DmdDistiller, load_dmd_config
from lpm.distill.ode import OdeDistiller, load_ode_config
from lpm.errors import LpmError
from lpm.training.base_trainer import BaseTrainer, load_base_config
from lpm.training.latent_cache import CachedClip
from lpm.training.motion_expert import (
    ExpertConfig,
    LatentMotionReader,
    channel_weights,
    expert_error,
    load_expert,
    save_expert,
    track_columns,
    train_expert,
    train_expert_run,
)
from lpm.world.motion import MOTION_NAMES

CHANNELS = ("jaw_open", "head_pitch")


def _clip(i: int, frames: int = 48) -> CachedClip:
    """A clip whose latents show its motion: jaw_open brightens the bottom half of channel 0 relative to the
    clip's own reference; head_pitch shifts channel 1's top half. Each clip has its own identity (reference)."""
    g = torch.Generator().manual_seed(i)
    ref = torch.randn(4, 8, 8, generator=g)
    motion = torch.zeros(frames, len(MOTION_NAMES))
    jaw = torch.rand(frames, generator=g)
    pitch = 20 * (torch.rand(frames, generator=g) - 0.5)
    motion[:, MOTION_NAMES.index("jaw_open")] = jaw
    motion[:, MOTION_NAMES.index("head_pitch")] = pitch
    latents = ref.expand(frames, -1, -1, -1).clone()
    latents[:, 0, 4:] += 2 * jaw[:, None, None]
    latents[:, 1, :4] += 0.1 * pitch[:, None, None]
    latents += 0.05 * torch.randn(latents.shape, generator=g)
    return CachedClip(id=f"c{i}", mode="speak", caption="", latents=latents.half(), mel=torch.zeros(2, frames, 4, 8),
                      references={"global": ref.half()}, pose=None, coverage=None,
                      states=torch.zeros(frames, dtype=torch.long), motion=motion)


def _reader(steps: int = 150) -> tuple[LatentMotionReader, object]:
    cfg = ExpertConfig(channels=CHANNELS, width=16, steps=steps, batch=64, noise_std=0.1)
    return train_expert(cfg, [_clip(i) for i in range(12)], [_clip(100 + i) for i in range(4)], progress=False)


@pytest.fixture(scope="module")
def reader():
    return _reader()


def test_reader_learns_a_reading_that_generalises_to_new_identities(reader):
    model, report = reader
    assert report.channels == CHANNELS and report.frames == {"train": 12 * 48, "val": 4 * 48}
    assert min(report.val_r) > 0.9, report.table()  # held-out identities: read through the reference


def test_expert_error_is_low_on_the_truth_high_on_a_still_frame_and_has_a_gradient(reader):
    model, _ = reader
    clip = _clip(200)
    video = clip.latents.float()[None, :16]  # (1, 16, C, h, w)
    track = torch.stack([clip.motion[:16, MOTION_NAMES.index(c)] / s for c, s in
                         zip(CHANNELS, _scales())], -1)[None]  # (1, 16, P) track units
    ref = clip.references["global"].float()[None]
    truth = expert_error(model, video, track, ref)
    still = ref[:, None].expand_as(video).clone().requires_grad_(True)  # the reference, not moving
    err = expert_error(model, still, track, ref)
    assert truth.item() < 0.25 and err.item() > 4 * truth.item(), (truth, err)
    err.sum().backward()
    assert still.grad is not None and still.grad.abs().sum() > 0
    only_pitch = expert_error(model, video, track, ref, channel_weights(model, ("head_pitch",)))
    assert only_pitch.item() <= truth.item() * len(CHANNELS) + 1e-6


def _scales() -> list[float]:
    from lpm.models.motion_track import track_scale

    return track_scale(CHANNELS).tolist()


def test_errors_name_the_problem(reader):
    model, _ = reader
    video = torch.zeros(1, 4, 4, 8, 8)
    with pytest.raises(LpmError, match="reads 2 channels"):
        expert_error(model, video, torch.zeros(1, 4, 3), torch.zeros(1, 4, 8, 8))
    with pytest.raises(LpmError, match="beside its reference"):
        expert_error(model, video, torch.zeros(1, 4, 2), None)
    with pytest.raises(LpmError, match="expert_channels"):
        channel_weights(model, ("smile",))
    with pytest.raises(LpmError, match="does not carry"):
        track_columns(model, ("jaw_open", "smile"))
    assert track_columns(model, ("smile", "head_pitch", "jaw_open")) == [2, 1]
    with pytest.raises(LpmError, match="ground-truth motion"):
        train_expert(ExpertConfig(channels=CHANNELS, steps=1), [_clip_without_motion()], [], progress=False)


def _clip_without_motion() -> CachedClip:
    clip = _clip(0)
    clip.motion = None
    return clip


def test_save_load_round_trip(reader, tmp_path):
    model, report = reader
    path = tmp_path / "expert.safetensors"
    save_expert(model, report, path)
    back = load_expert(path)
    x, ref = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    assert torch.equal(back(x, ref), model(x, ref))
    assert not any(p.requires_grad for p in back.parameters())
    other = tmp_path / "other.safetensors"
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(1)}, str(other), metadata={"kind": "vae"})
    with pytest.raises(LpmError, match="not a motion expert"):
        load_expert(other)
    with pytest.raises(LpmError, match="no such file"):
        load_expert(tmp_path / "missing.safetensors")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Data, VAE and a 2-step Base with a motion track, and an ODE student of it."""
    root = tmp_path_factory.mktemp("expert")
    data, vae = make_dataset(root / "data"), make_vae(root / "vae.safetensors")
    track = "model.motion_channels=[jaw_open,head_pitch]"
    cfg = load_base_config("tiny", None, [*MICRO, track, "steps=2", f"cache_dir={root / 'cache'}"])
    BaseTrainer(cfg, data, str(vae), root / "base").run()
    keys = [k for k in MICRO if not k.startswith("model.")]
    OdeDistiller(load_ode_config(None, [*keys, f"teacher={root / 'base'}", "target=data", "steps=1"]),
                 data, str(vae), root / "ode").run()
    return root, data, vae, keys


def test_dmd_with_the_expert_logs_its_error_and_floor(world, tmp_path):
    root, data, vae, keys = world
    report = train_expert_run(data, str(vae), str(root / "base" / "dit_ema.safetensors"), tmp_path / "expert",
                              ExpertConfig(width=16, steps=5, batch=16), cache_dir=root / "cache")
    assert report.channels == ("jaw_open", "head_pitch")
    assert (tmp_path / "expert" / "report.md").is_file()
    expert = tmp_path / "expert" / "expert.safetensors"
    run = tmp_path / "dmd"
    cfg = load_dmd_config(None, [*keys, f"teacher={root / 'base'}", f"student={root / 'ode'}", "steps=2",
                                 "batch=2", "generator_every=1", f"expert={expert}", "expert_weight=0.5",
                                 "expert_channels=[head_pitch]"])
    DmdDistiller(cfg, data, str(vae), run).run()
    rows = [json.loads(r) for r in (run / "log.jsonl").read_text().splitlines()]
    assert rows and all(math.isfinite(r["expert"]) and r["expert"] >= 0 and math.isfinite(r["expert_floor"])
                        for r in rows)
    with pytest.raises(ConfigError, match="expert=PATH"):
        load_dmd_config(None, [*keys, f"teacher={root / 'base'}", "expert_weight=1"])
    with pytest.raises(LpmError, match="expert_channels"):
        bad = load_dmd_config(None, [*keys, f"teacher={root / 'base'}", f"student={root / 'ode'}", "steps=1",
                                     f"expert={expert}", "expert_weight=1", "expert_channels=[smile]"])
        DmdDistiller(bad, data, str(vae), tmp_path / "bad").run()


def test_a_pooled_readout_learns_with_fewer_weights_and_keeps_its_config(tmp_path):
    cfg = ExpertConfig(channels=CHANNELS, width=16, steps=150, batch=64, noise_std=0.1, readout=2, dropout=0.1)
    model, report = train_expert(cfg, [_clip(i) for i in range(12)], [_clip(100 + i) for i in range(4)],
                                 progress=False)
    full = LatentMotionReader(ExpertConfig(channels=CHANNELS, width=16, latent_channels=4), 8, 8)
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in full.parameters())
    assert min(report.val_r) > 0.8, report.table()
    save_expert(model, report, tmp_path / "pooled.safetensors")
    back = load_expert(tmp_path / "pooled.safetensors")
    assert back.cfg.readout == 2 and back.cfg.dropout == 0.1
    x, ref = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    assert torch.equal(back(x, ref), model(x, ref))
