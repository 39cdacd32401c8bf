"""The restorer: it starts as the identity, reads its reference, checks its inputs, saves and loads, and its
trainer prepares pairs, trains, reports and resumes."""

from __future__ import annotations

import json

import pytest
import torch

from base_fixtures import make_dataset, make_vae
from lpm.errors import LpmError
from lpm.models.restorer import Restorer, RestorerConfig, load_restorer
from lpm.training.restorer_trainer import RestorerTrainConfig, load_restorer_config, soften, train_restorer

SMALL = RestorerConfig(channels=(8, 16), blocks=1, norm_groups=4, resolution=32)


def test_starts_as_identity_and_checks_inputs():
    torch.manual_seed(0)
    model = Restorer(SMALL)
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    ref = torch.rand(1, 3, 32, 32) * 2 - 1
    assert torch.equal(model(x, ref), x)
    assert torch.equal(model(x, ref.expand(3, -1, -1, -1)), x)
    with pytest.raises(LpmError, match="multiple of 4"):
        model(torch.zeros(1, 3, 30, 32), torch.zeros(1, 3, 30, 32))
    with pytest.raises(LpmError, match="reference must be"):
        model(x, torch.zeros(2, 3, 32, 32))
    with pytest.raises(LpmError, match=r"\(N, 3, H, W\)"):
        model(torch.zeros(3, 32, 32), ref)
    with pytest.raises(LpmError, match="divisible"):
        RestorerConfig(channels=(6, 12), norm_groups=4)
    with pytest.raises(LpmError, match="attention_window must be 0 or odd"):
        RestorerConfig(attention_window=4)


def _task(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Targets are sharp random patterns; the frame is the target blurred, the reference the target itself
    (the detail the frame lost is in the reference, nowhere else)."""
    sharp = (torch.rand(n, 3, 8, 8, generator=g) > 0.5).float() * 2 - 1
    sharp = sharp.repeat_interleave(4, 2).repeat_interleave(4, 3)  # (n, 3, 32, 32) blocks of 4 px
    blurred = torch.nn.functional.avg_pool2d(sharp, 5, 1, 2, count_include_pad=False)
    return blurred, sharp, sharp


@pytest.mark.parametrize("attention_window", [0, 5])
def test_learns_to_take_detail_from_the_reference(attention_window):
    """With the window attention the reference is also shifted by 3 px (the head moved): it must look it up."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = Restorer(RestorerConfig(**{**SMALL.__dict__, "attention_window": attention_window}))
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.equal(model(x, x[:1]), x)  # the identity at the start, attention or not
    shift = 3 if attention_window else 0

    def task(n: int):
        frame, ref, target = _task(n, g)
        return frame, ref.roll((shift, -shift), (2, 3)), target

    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(150):
        frame, ref, target = task(16)
        loss = (model(frame, ref) - target).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    frame, ref, target = task(32)
    with torch.no_grad():
        before = (frame - target).abs().mean()
        right = (model(frame, ref) - target).abs().mean()
        wrong = (model(frame, ref.roll(1, 0)) - target).abs().mean()  # another sample's reference
    assert right < 0.5 * before
    assert right < 0.5 * wrong  # the gain comes from reading the reference


def test_save_and_load(tmp_path):
    torch.manual_seed(0)
    model = Restorer(SMALL)
    with torch.no_grad():
        model.head[-1].weight.normal_(0, 0.1)
    path = model.save(tmp_path / "r.safetensors", extra={"note": 1})
    loaded = load_restorer(path)
    x, ref = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(1, 3, 32, 32) * 2 - 1
    assert loaded.cfg == SMALL
    assert torch.allclose(loaded(x, ref), model(x, ref))
    with pytest.raises(LpmError, match="no such file"):
        load_restorer(tmp_path / "missing.safetensors")
    vae = make_vae(tmp_path / "vae.safetensors")
    with pytest.raises(Exception, match="restorer"):
        load_restorer(vae)


def test_soften():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 3, 8, 8, generator=g)
    none = soften(z, torch.tensor([1e-4, 1e-4]), torch.zeros_like(z))
    assert torch.allclose(none, z, atol=1e-5)
    flat = torch.full((1, 2, 8, 8), 0.7)
    assert torch.allclose(soften(flat, torch.tensor([1.0]), torch.zeros_like(flat)), flat, atol=1e-6)
    wide = soften(z, torch.tensor([0.5, 1.5]), torch.zeros_like(z))
    assert wide[1].std() < wide[0].std() < z.std()  # wider blur, less variation


def test_train_restorer_reports_and_resumes(tmp_path):
    data = make_dataset(tmp_path / "data")
    vae = make_vae(tmp_path / "vae.safetensors")
    cfg = load_restorer_config(None, ["steps=12", "batch=4", "runs_per_clip=2", "run_frames=3",
                                      "model.channels=[8,16]", "model.blocks=1", "model.norm_groups=4"])
    out = tmp_path / "run"
    results = train_restorer(data, str(vae), out, cfg, progress=False)
    assert set(results) == {"val"}  # the fixture has no zero-shot clips
    r = results["val"]
    assert r["frames"] == 6
    for key in ("clean_psnr", "clean_restored_psnr", "soft_psnr", "soft_restored_psnr"):
        assert 0 < r[key] < 100
    assert (out / "samples.png").is_file() and (out / "eval.md").is_file()
    report = json.loads((out / "eval.json").read_text())
    assert report["step"] == 12 and report["config"]["steps"] == 12
    model = load_restorer(out / "restorer.safetensors")
    assert model.cfg.resolution == 64  # taken from the data
    # a rerun with more steps resumes from the saved state
    more = RestorerTrainConfig(**{**cfg.__dict__, "steps": 16})
    train_restorer(data, str(vae), out, more, progress=False)
    assert json.loads((out / "eval.json").read_text())["step"] == 16
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert steps == [12, 16]  # the last step of each call (fewer than 25 steps apart)
    # the cached pairs are keyed by what made them: other softening, other pairs; more steps, the same ones
    from lpm.training.restorer_trainer import pairs_key
    key = pairs_key(data, str(vae), cfg)
    assert sorted(f.name for f in out.glob("pairs_*.npz")) == [f"pairs_train_{key}.npz", f"pairs_val_{key}.npz"]
    assert pairs_key(data, str(vae), RestorerTrainConfig(**{**cfg.__dict__, "soften_noise": 0.05})) != key
    assert pairs_key(data, str(vae), RestorerTrainConfig(**{**cfg.__dict__, "steps": 99})) == key
    expr_model = RestorerConfig(**{**cfg.model.__dict__, "reference": "expression"})
    assert pairs_key(data, str(vae), RestorerTrainConfig(**{**cfg.__dict__, "model": expr_model})) != key
    from lpm.training.restorer_trainer import Pairs
    pairs = Pairs.load(out / f"pairs_train_{key}.npz")
    assert pairs.expression.shape == pairs.masks.shape and pairs.expression.any()  # brows and cheeks boxed
    assert (pairs.expression & ~pairs.masks).any()  # not the mouth and eyes again
    # a restorer with the window attention starts from this one: the same output before any step
    grown = tmp_path / "grown"
    grow = RestorerTrainConfig(**{**cfg.__dict__, "steps": 0, "init": str(out / "restorer.safetensors"),
                                  "model": RestorerConfig(**{**cfg.model.__dict__, "attention_window": 3})})
    train_restorer(data, str(vae), grown, grow, progress=False)
    x, ref = torch.rand(2, 3, 64, 64) * 2 - 1, torch.rand(1, 3, 64, 64) * 2 - 1
    before = load_restorer(out / "restorer.safetensors")
    assert torch.allclose(load_restorer(grown / "restorer.safetensors")(x, ref), before(x, ref), atol=1e-6)
    with pytest.raises(LpmError, match="do not fit"):
        wide = RestorerConfig(**{**cfg.model.__dict__, "channels": (8, 24)})
        train_restorer(data, str(vae), tmp_path / "wide", RestorerTrainConfig(**{**grow.__dict__, "model": wide}),
                       progress=False)
    with pytest.raises(LpmError, match="not a clip data set"):
        train_restorer(tmp_path, str(vae), out, cfg, progress=False)


def test_export_names_the_restorer_and_the_engine_applies_it(tmp_path, one_thread):
    import numpy as np

    from lpm.models.export import export_dit
    from lpm.runtime.dit_engine import DiTEngine, DiTEngineConfig, DrawnChunk
    from lpm.runtime.engines import Character, EngineError
    from lpm.training.checkpoint import read_metadata
    from test_generate import online_checkpoint

    src = online_checkpoint(tmp_path / "online.safetensors")
    torch.manual_seed(0)
    restorer = Restorer(RestorerConfig(resolution=128))
    with torch.no_grad():
        restorer.head[-1].weight.normal_(0, 0.05)
    r_path = restorer.save(tmp_path / "models" / "restorer.safetensors")
    out = export_dit(src, tmp_path / "models" / "online.safetensors", restorer=r_path).path
    assert read_metadata(out)["extra"]["online"]["restorer"] == "restorer.safetensors"  # beside the checkpoint
    image = np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8)
    character = Character(images={"global": image})
    latents = torch.randn(1, 2, 8, 16, 16, generator=torch.Generator().manual_seed(0))

    def frames(**cfg) -> np.ndarray:
        engine = DiTEngine.load(character, DiTEngineConfig(**cfg))
        payload = DrawnChunk(latents, None, engine._restorer_image(None, 0, 2))
        return np.stack(list(engine.frame_stream()(payload, {}))).astype(int), engine

    plain, engine = frames(checkpoint=str(src))
    restored, _ = frames(checkpoint=str(out))
    off, _ = frames(checkpoint=str(out), restorer="")
    assert np.array_equal(plain, off)
    with torch.no_grad():
        decoded = engine.codec.decode(latents)[0]
        want = restorer(decoded, engine.reference_pixels["global"])
    want = ((want + 1) * 127.5).round().permute(0, 2, 3, 1).numpy().astype(int)
    assert np.abs(restored - want).max() <= 1 and np.abs(restored - plain).max() > 2
    cleared = export_dit(out, tmp_path / "cleared.safetensors", restorer="").path
    assert "restorer" not in read_metadata(cleared)["extra"]["online"]
    small = Restorer(RestorerConfig(resolution=64)).save(tmp_path / "small.safetensors")
    with pytest.raises(EngineError, match="trained on 64px frames"):
        DiTEngine.load(character, DiTEngineConfig(checkpoint=str(src), restorer=str(small)))
    with pytest.raises(LpmError, match="not an Online checkpoint"):
        export_dit(online_checkpoint(tmp_path / "base.safetensors", online=None), tmp_path / "x.safetensors",
                   restorer=r_path)


def _online_micro(path, latent_channels: int = 4):
    """A random Online DiT of the micro shape, on the latents of ``make_vae``'s VAE (4 channels, 8x down, 64 px)."""
    import dataclasses

    from base_fixtures import MICRO
    from lpm.models.dit import DiT, save_dit
    from lpm.training.base_trainer import load_base_config

    cfg = load_base_config("tiny", None, MICRO).model
    cfg = dataclasses.replace(cfg, latent_channels=latent_channels, latent_height=8, latent_width=8,
                              attention="block_causal")
    torch.manual_seed(0)
    return save_dit(path, DiT(cfg), extra={"online": {"timesteps": [1.0, 0.0], "sampler": "renoise"}})


def test_still_chunks_keep_the_pose_near_straight_ahead():
    from lpm.training.dit_drawn import still_chunks
    from lpm.world.motion import MOTION_INDEX, NUM_MOTION

    motion = torch.zeros(12, NUM_MOTION)
    motion[5, MOTION_INDEX["head_roll"]] = -6.0  # frame 5 tilted
    motion[9, MOTION_INDEX["body_yaw"]] = 8.0  # frame 9 turned
    every = still_chunks(12, motion, 4, 2, 0.0)
    assert len(every) == 9 * 2 and (8, 1) in every
    kept = still_chunks(12, motion, 4, 2, 4.0)
    for start, chunk in kept:
        frames = set(range(start + 2 * chunk, start + 2 * chunk + 2))
        assert not frames & {5, 9}
    assert (0, 0) in kept and (2, 1) not in kept and (6, 0) in kept and (6, 1) not in kept
    assert still_chunks(12, None, 4, 2, 4.0) == every


def test_restorer_pairs_drawn_by_the_online_model(tmp_path):
    """``dit=``: the soft inputs are the Online model's streamed drawing of still chunks, lined up with the truth."""
    import numpy as np

    from lpm.models.latent_codec import load_codec
    from lpm.training.restorer_trainer import pairs_key, prepare_pairs

    data = make_dataset(tmp_path / "data")
    vae = make_vae(tmp_path / "vae.safetensors")
    online = _online_micro(tmp_path / "online.safetensors")
    cfg = load_restorer_config(None, [f"dit={online}", f"cache_dir={tmp_path / 'cache'}", "runs_per_clip=2",
                                      "dit_max_deg=4"])
    codec = load_codec(str(vae))
    pairs = prepare_pairs(data, "train", codec, cfg, vae=str(vae))
    assert pairs.truth.shape == (2 * 2 * 2, 64, 64, 3)  # 2 clips x 2 runs x one chunk of 2 frames
    assert pairs.soft.shape == pairs.truth.shape and pairs.soft.dtype == np.uint8
    assert np.abs(pairs.soft.astype(int) - pairs.clean.astype(int)).mean() > 1  # drawn, not the round trip
    again = prepare_pairs(data, "train", codec, cfg, vae=str(vae))
    assert np.array_equal(again.soft, pairs.soft)  # seeded
    assert pairs_key(data, str(vae), cfg) != pairs_key(data, str(vae), RestorerTrainConfig(**{**cfg.__dict__,
                                                                                               "dit": ""}))
    out = tmp_path / "run"
    small = ["steps=3", "batch=4", "model.channels=[8,16]", "model.blocks=1", "model.norm_groups=4"]
    results = train_restorer(data, str(vae), out, load_restorer_config(None, [*small, *[f"{k}={v}" for k, v in (
        ("dit", online), ("cache_dir", tmp_path / "cache"), ("runs_per_clip", 2))]]), progress=False)
    assert results["val"]["frames"] == 4
    with pytest.raises(LpmError, match="not an Online checkpoint"):
        from lpm.models.dit import load_dit, save_dit
        base = save_dit(tmp_path / "base.safetensors", load_dit(online))
        prepare_pairs(data, "train", codec, RestorerTrainConfig(**{**cfg.__dict__, "dit": str(base)}), vae=str(vae))
    with pytest.raises(LpmError, match="no such checkpoint"):
        load_restorer_config(None, [f"dit={tmp_path / 'none.safetensors'}"])


def test_expression_kind_reads_the_strongest_emotion():
    from lpm.models.expression import EXPRESSION_FLOOR, expression_kind

    names = ["emo_happy", "emo_sad", "emo_surprised", "emo_angry"]
    assert expression_kind([0.0, 0.6, 0.2, 0.0], names) == "expr_sad"
    assert expression_kind([0.9, 0.0, 0.0, 0.3], names) == "expr_happy"
    assert expression_kind([EXPRESSION_FLOOR - 0.01] * 4, names) == "global"  # no emotion: the global image
    assert expression_kind([], []) == "global"
    with pytest.raises(ValueError, match="3 values for 4 channels"):
        expression_kind([0.5, 0, 0], names)
    with pytest.raises(LpmError, match="reference must be one of"):
        RestorerConfig(reference="body_front")


def test_frame_reference_kinds_follow_each_frames_true_emotion():
    from types import SimpleNamespace

    import numpy as np

    from lpm.training.restorer_trainer import frame_reference_kinds

    names = ("jaw_open", "emo_happy", "emo_sad")
    motion = torch.tensor([[0.5, 0.0, 0.0], [0.1, 0.8, 0.0], [0.0, 0.0, 0.4], [0.9, 0.1, 0.05]])
    refs = {"global": None, "expr_happy": None}  # no sad exemplar
    clip = SimpleNamespace(motion=motion, motion_names=names, refs=refs)
    idx = np.array([0, 1, 2, 3, 1])
    assert frame_reference_kinds(clip, idx, "expression") == ["global", "expr_happy", "global", "global", "expr_happy"]
    assert frame_reference_kinds(clip, idx, "global") == ["global"] * 5
    assert frame_reference_kinds(SimpleNamespace(motion=None, motion_names=(), refs=refs), idx, "expression") == \
        ["global"] * 5


def test_an_expression_restorer_reads_the_exemplar_of_the_predicted_emotion(tmp_path, one_thread):
    import numpy as np

    from lpm.models.dit import save_dit
    from lpm.runtime.dit_engine import DiTEngine, DiTEngineConfig
    from lpm.runtime.engines import Character
    from test_generate import ONLINE, small_dit

    channels = ("jaw_open", "emo_happy", "emo_sad")
    model = small_dit(0, attention="block_causal", motion_channels=channels)
    src = save_dit(tmp_path / "online.safetensors", model, extra={"step": 1, "online": ONLINE})
    rng = np.random.default_rng(0)
    images = {k: rng.integers(0, 255, (128, 128, 3), dtype=np.uint8) for k in ("global", "expr_happy")}
    expression = Restorer(RestorerConfig(resolution=128, reference="expression")).save(tmp_path / "expr.safetensors")
    plain = Restorer(RestorerConfig(resolution=128)).save(tmp_path / "plain.safetensors")
    engine = DiTEngine.load(Character(images=images), DiTEngineConfig(checkpoint=str(src), restorer=str(expression)))
    pixels = engine.reference_pixels

    def track(happy: float, sad: float):
        def predict(cond, first, n):  # the speech network's prediction, replaced by a known one
            return torch.tensor([0.3, happy, sad]).expand(1, n, 3)
        engine.model.predict_motion = predict
        return engine._restorer_image(None, 0, 2)

    assert track(0.7, 0.0) is pixels["expr_happy"]
    assert track(0.05, 0.1) is pixels["global"]  # below the floor: no emotion
    assert track(0.0, 0.9) is pixels["global"]  # the session has no sad exemplar
    from types import SimpleNamespace

    def unused(cond, first, n):
        raise AssertionError("the chunk context's track is reused, not predicted again")
    engine.model.predict_motion = unused
    context = SimpleNamespace(motion=SimpleNamespace(track=torch.tensor([0.3, 0.8, 0.0]).expand(1, 2, 3)))
    assert engine._restorer_image(None, 0, 2, context) is pixels["expr_happy"]
    other = DiTEngine.load(Character(images=images), DiTEngineConfig(checkpoint=str(src), restorer=str(plain)))
    other.model.predict_motion = lambda cond, first, n: torch.tensor([0.3, 0.9, 0.0]).expand(1, n, 3)
    assert other._restorer_image(None, 0, 2) is other.reference_pixels["global"]  # a global restorer: always global
    assert DiTEngine.load(Character(images=images), DiTEngineConfig(checkpoint=str(src), restorer=""))._restorer_image(
        None, 0, 2) is None
