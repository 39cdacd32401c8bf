"""The bench's DiT systems (``lpm.eval.dit_systems``) on a random, shrunken DiT and a random tiny VAE (CPU, seconds)."""

from pathlib import Path

import numpy as np
import pytest
import torch

from lpm.audio.mel import MelConfig
from lpm.eval import systems as eval_systems
from lpm.eval.commands import _parse_checkpoints
from lpm.eval.dit_systems import BaseSampling, BaseSystem, OnlineSystem
from lpm.eval.systems import ClipInputs, make_systems, timed_stream
from lpm.models.dit import DiT, save_dit
from lpm.models.dit_config import DiTConfig
from lpm.models.vae import LpmVAE, VAEConfig
from lpm.runtime.dit_engine import SERVING_COMPUTE, DiTEngine
from lpm.training.base_batches import ConditionDropout, Window, WindowSampler
from lpm.training.latent_cache import CachedClip

RES, FRAMES = 64, 14  # 14 frames: a partial last chunk (4-frame chunks) and an overlapping last window (8 frames)
REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _dit(attention: str, t_down: int = 1) -> DiT:
    torch.manual_seed(0)
    cfg = DiTConfig(latent_height=8, latent_width=8, dim=64, num_blocks=2, num_heads=2, ffn_dim=128, text_dim=32,
                    text_layers=1, text_heads=2, audio_dim=32, audio_layers=1, mel=MelConfig(n_mels=16),
                    attention=attention, window_chunks=2, t_down=t_down)
    model = DiT(cfg)
    torch.nn.init.normal_(model.head.linear.weight, std=0.02)  # the zero-initialised head would ignore its inputs
    return model


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("dit_systems")
    torch.manual_seed(0)
    vae = LpmVAE(VAEConfig(channels=(8, 8, 8), norm_groups=4)).save(root / "vae.safetensors")
    base = save_dit(root / "base.safetensors", _dit("bidirectional"),
                    {"train_config": {"frames": 8, "guidance": {"text": 2.0, "audio_self": 2.0}}})
    online = save_dit(root / "online.safetensors", _dit("block_causal"),
                      {"online": {"timesteps": [1.0, 0.75, 0.0], "sampler": "renoise", "refiner_time": 0.3}})
    return {"vae": str(vae), "base": base, "online": online, "root": root}


def _case(res: int = RES) -> ClipInputs:
    rng = np.random.default_rng(0)
    n = FRAMES * 16000 // 24 - 5  # a few samples short of the last frame, as clips may be
    speech = (rng.normal(size=n) * np.sin(np.linspace(0, 20, n)) ** 2 * 0.2).astype(np.float32)
    refs = {k: rng.integers(0, 255, (res, res, 3), dtype=np.uint8) for k in ("global", "body_front", "expr_happy")}
    return ClipInputs("case", "val", "photo", FRAMES, speech, speech[::-1].copy(), refs, "someone, quite happy")


def test_online_streams_chunk_by_chunk(files, monkeypatch):
    system = OnlineSystem("online", files["online"], vae=files["vae"], device="cpu")
    steps = []
    step = DiTEngine.step
    monkeypatch.setattr(DiTEngine, "step", lambda self, chunk: steps.append(chunk.index) or step(self, chunk))
    inputs = _case()
    assert system.engine(inputs).timesteps.tolist() == [1.0, 0.75, 0.0]  # the checkpoint's own few-step schedule
    it = system.stream(inputs, chunk_frames=4)
    first = next(it)
    assert first.shape == (4, RES, RES, 3) and steps == [0]  # one engine chunk per yielded chunk, no more
    rest = list(it)
    assert [len(c) for c in rest] == [4, 4, 2] and steps == [0, 1, 2, 3]
    timed = list(timed_stream(system, inputs, chunk_frames=6))  # the bench's chunks need not match the model's
    assert [len(c) for c, _, _ in timed] == [6, 6, 2]
    assert [u for _, _, u in timed] == [9, 13, 14]  # end of the model chunk holding the frame + 1 frame lookahead
    frames = np.concatenate([c for c, _, _ in timed])
    assert np.array_equal(frames, np.concatenate([first, *rest]))  # same seed, same frames
    refined = OnlineSystem("online+refiner", files["online"], vae=files["vae"], refiner=True, device="cpu")
    out = refined.generate(_case(48))  # frames come back at the case's resolution
    assert out.shape == (FRAMES, 48, 48, 3) and out.dtype == np.uint8


def test_base_generates_windows(files):
    system = BaseSystem("base", files["base"], vae=files["vae"], sampling=BaseSampling(steps=2), device="cpu")
    assert system.window == 8 and system.windows(FRAMES) == [(0, 0, 8), (6, 8, 14)]
    assert system.windows(5) == [(0, 0, 5)]
    inputs = _case()
    timed = list(timed_stream(system, inputs, chunk_frames=12))
    assert [len(c) for c, _, _ in timed] == [8, 6]  # window by window
    assert [u for _, _, u in timed] == [9, 14]  # a window needs the audio to its end (+ lookahead)
    frames = np.concatenate([c for c, _, _ in timed])
    assert frames.shape == (FRAMES, RES, RES, 3) and frames.dtype == np.uint8
    assert np.array_equal(frames, system.generate(inputs))  # seeds fixed per window
    assert system.generate(_case(48)).shape == (FRAMES, 48, 48, 3)


def test_base_conditioning_is_the_trainers(files):
    system = BaseSystem("base", files["base"], vae=files["vae"], sampling=BaseSampling(steps=1), device="cpu")
    inputs = _case()
    mel, refs = system.clip_mel(inputs), system.reference_latents(inputs)
    assert mel.shape[:2] == (2, FRAMES) and list(refs) == ["global", "body_front", "expr_happy"]
    clip = CachedClip("case", "speak", inputs.caption, torch.zeros(FRAMES, 8, 8, 8).half(), mel,
                      {k: v[0] for k, v in refs.items()}, None, None, torch.zeros(FRAMES, dtype=torch.long))
    sampler = WindowSampler([clip], system.window, system.audio_before, system.audio_after, system.silent,
                            ConditionDropout(), 0.0, False, 0)
    want = sampler.assemble([Window(clip, 6)]).cond
    got = system.conditioning(inputs, mel, refs, 6)
    assert got.captions == want.captions and got.audio_start_frame == want.audio_start_frame
    assert torch.equal(got.mel_self, want.mel_self) and torch.equal(got.mel_partner, want.mel_partner)
    assert list(got.references) == list(want.references)
    assert all(torch.equal(got.references[k], want.references[k]) for k in refs)


def test_base_at_t_down_2_windows_latent_frames(files):
    """With a codec of 2 video frames per latent frame the Base windows latent frames, reads the mel grouped as the
    latent cache stores it, and gives back every video frame of the clip (an odd count too)."""
    from lpm.eval.systems import SystemUnavailable
    from lpm.models.causal_vae import CausalVAE, CausalVAEConfig

    model = _dit("bidirectional", t_down=2)
    torch.manual_seed(0)
    vae = CausalVAE(CausalVAEConfig(latent_channels=model.cfg.latent_channels, t_down=2, channels=(8, 8, 8),
                                    norm_groups=4)).save(files["root"] / "causal.safetensors")
    base = save_dit(files["root"] / "base_t2.safetensors", model, {"train_config": {"frames": 4}})
    system = BaseSystem("base", base, vae=str(vae), sampling=BaseSampling(steps=1), device="cpu")
    inputs = _case()
    mel = system.clip_mel(inputs)
    per_frame = BaseSystem("base", files["base"], vae=files["vae"], device="cpu").clip_mel(inputs)  # (2, 14, k, M)
    assert torch.equal(mel, per_frame.reshape(2, FRAMES // 2, -1, per_frame.shape[-1]))  # latent_cache's grouping
    assert system.windows(FRAMES // 2) == [(0, 0, 4), (3, 4, 7)]
    timed = list(timed_stream(system, inputs, chunk_frames=12))
    assert [len(c) for c, _, _ in timed] == [8, 6]  # each window's kept latent frames, in video frames
    assert [u for _, _, u in timed] == [min(FRAMES, 2 * (4 + system.audio_after)), FRAMES]
    odd = _case()
    odd.num_frames = FRAMES - 1  # the last latent frame is half past the clip: its padding is cut
    assert system.generate(odd).shape == (FRAMES - 1, RES, RES, 3)
    with pytest.raises(SystemUnavailable, match="t_down 2"):
        BaseSystem("base", base, vae=files["vae"], device="cpu")


def test_loader_names_and_reasons(files, monkeypatch):
    monkeypatch.chdir(REPO)  # the loader's codec is the shipped checkpoints/vae_tiny.safetensors
    corrupt = files["root"] / "corrupt.safetensors"
    corrupt.write_bytes(b"not a checkpoint")
    systems = {s.name: s for s in make_systems({"base": files["base"], "online": files["online"]}, refiner=True,
                                               base_steps=3)}
    assert list(systems)[-3:] == ["base", "online", "online+refiner"]
    assert all(systems[n].unavailable() is None for n in ("base", "online", "online+refiner"))
    assert isinstance(systems["base"]._system, BaseSystem) and systems["base"]._system.sampling.steps == 3
    assert systems["online+refiner"]._system.refiner and not systems["online"]._system.refiner
    served = {s.name: s for s in make_systems({"online+served": files["online"]})}["online+served"]._system
    assert served.compute == SERVING_COMPUTE and not served.refiner  # what `lpm serve` computes in
    assert systems["online"]._system.compute == {}
    swapped = {s.name: s.unavailable() for s in make_systems({"base": files["online"], "online": files["base"]})}
    assert "block_causal DiT, base needs a bidirectional" in swapped["base"]
    assert "bidirectional DiT, online needs a block_causal" in swapped["online"]
    missing = {s.name: s.unavailable() for s in make_systems({"base": str(corrupt), "online": "nope.safetensors"})}
    assert "not a readable safetensors" in missing["base"] and "does not exist" in missing["online"]
    bare = _parse_checkpoints([str(files["online"]), str(files["base"])], defaults=False)
    assert bare == {"online": str(files["online"]), "base": str(files["base"])}  # named by attention mode
    monkeypatch.setitem(eval_systems.DEFAULT_CHECKPOINTS, "base", str(files["base"]))
    assert _parse_checkpoints([])["base"] == str(files["base"])  # the shipped default, when it exists
    assert "base" not in _parse_checkpoints([], defaults=False)


def test_a_run_checkpoint_is_rated_with_the_codec_it_was_trained_with(tmp_path):
    import json

    from lpm.eval.dit_systems import training_vae
    from lpm.runtime.dit_engine import DEFAULT_VAE

    run = tmp_path / "run"
    run.mkdir()
    weights = run / "dit_ema.safetensors"
    assert training_vae(weights) == DEFAULT_VAE  # no sources.json: the shipped codec
    codec = tmp_path / "causal.safetensors"
    (run / "sources.json").write_text(json.dumps({"data": "d", "vae": str(codec)}))
    assert training_vae(weights) == DEFAULT_VAE  # the recorded codec is gone: the shipped one
    codec.write_bytes(b"x")
    assert training_vae(weights) == str(codec)
    (run / "sources.json").write_text("{not json")
    assert training_vae(weights) == DEFAULT_VAE


def test_base_samples_with_its_checkpoints_restorer_steps_and_track_gain(files, tmp_path):
    """``lpm export`` of a Base checkpoint stores steps, track gain and restorer in ``extra["base"]``; the bench's
    Base system samples with them: its frames are the plain frames through the restorer beside the global image,
    and the gain reaches the conditioning (the frames change)."""
    from lpm.data.clip import image_to_tensor
    from lpm.errors import LpmError
    from lpm.eval.systems import SystemUnavailable
    from lpm.models.export import export_dit
    from lpm.models.restorer import Restorer, RestorerConfig

    torch.manual_seed(0)
    cfg = DiTConfig(latent_height=8, latent_width=8, dim=64, num_blocks=2, num_heads=2, ffn_dim=128, text_dim=32,
                    text_layers=1, text_heads=2, audio_dim=32, audio_layers=1, mel=MelConfig(n_mels=16),
                    motion_channels=("jaw_open", "smile"))
    model = DiT(cfg)
    torch.nn.init.normal_(model.head.linear.weight, std=0.02)
    for p in model.motion_embed.parameters():  # its output starts at zero: make the track matter
        torch.nn.init.normal_(p, std=0.5)
    src = save_dit(tmp_path / "base.safetensors", model, {"train_config": {"frames": 8}})
    restorer = Restorer(RestorerConfig(resolution=RES, channels=(8, 16), blocks=1, norm_groups=4))
    with torch.no_grad():
        for p in restorer.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # the last convolution starts at zero: make it do something
    r_path = restorer.save(tmp_path / "restorer.safetensors")
    out = export_dit(src, tmp_path / "out" / "base.safetensors", restorer=r_path, track_gain={"smile": 3},
                     base_steps=2, base_guidance={"audio_self": 1.5}).path
    system = BaseSystem("base", out, vae=files["vae"], device="cpu")
    assert system.steps == 2 and system.restorer is not None and system.guidance.scales == {"audio_self": 1.5}
    assert BaseSystem("base", out, vae=files["vae"], device="cpu",
                      sampling=BaseSampling(guidance={})).guidance.guided == []  # the caller's setting wins
    with pytest.raises(LpmError, match="unknown guidance condition"):
        export_dit(src, tmp_path / "x.safetensors", base_guidance={"audio": 2})
    assert system.track_gain.tolist() == [1.0, 3.0] and "track gain (smile 3)" in system.note
    inputs = _case()
    mel, refs = system.clip_mel(inputs), system.reference_latents(inputs)
    assert torch.equal(system.conditioning(inputs, mel, refs, 0).track_gain, system.track_gain)
    plain = BaseSystem("base", out, vae=files["vae"], device="cpu", sampling=BaseSampling(restorer=""))
    assert plain.restorer is None and plain.steps == 2
    glob = image_to_tensor(inputs.refs["global"])[None]
    with torch.no_grad():
        cond = plain.conditioning(inputs, mel, refs, 0)
        want = restorer(((torch.from_numpy(plain.sample_window(cond, 0)).permute(0, 3, 1, 2).float() / 127.5) - 1),
                        glob.expand(8, -1, -1, -1))
    want = ((want + 1) * 127.5).round().permute(0, 2, 3, 1).numpy()
    got = system.sample_window(cond, 0, glob)
    assert np.abs(got - want).max() <= 2 and np.abs(got.astype(int) - plain.sample_window(cond, 0)).max() > 2
    ungained = BaseSystem("base", out, vae=files["vae"], device="cpu", sampling=BaseSampling(restorer="",
                                                                                             track_gain={}))
    assert ungained.track_gain is None
    assert not np.array_equal(ungained.sample_window(ungained.conditioning(inputs, mel, refs, 0), 0),
                              plain.sample_window(cond, 0))
    (tmp_path / "restorer.safetensors").unlink()
    with pytest.raises(SystemUnavailable, match="does not exist"):
        BaseSystem("base", out, vae=files["vae"], device="cpu")
