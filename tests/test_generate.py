"""``lpm export`` (bf16 round trip), Online checkpoint metadata -> DiT engine sampling, ``lpm generate`` from files."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from lpm.audio.mel import MelConfig
from lpm.cli import main
from lpm.data.video import read_mp4, write_wav
from lpm.errors import LpmError
from lpm.models.conditioning import Conditioning, References
from lpm.models.dit import DiT, load_dit, save_dit
from lpm.models.dit_config import preset
from lpm.models.export import export_dit
from lpm.runtime.dit_engine import DEFAULT_VAE, DiTEngine, DiTEngineConfig, online_sampling_of
from lpm.runtime.engines import Character, ChunkInput, EngineError, samples_for_frames
from lpm.runtime.generate import DEFAULT_CHECKPOINT, GenerateConfig, generate, load_audio
from lpm.training.checkpoint import read_metadata

SR = 16000
ONLINE = {"timesteps": [1.0, 0.75, 0.0], "sampler": "renoise", "refiner_time": None}


def small_dit(seed: int = 0, **overrides) -> DiT:
    """A shrunk tiny DiT with the shipped VAE's latent shape (8 channels, 16x16 for 128 px), random weights."""
    cfg = preset("tiny", num_blocks=2, dim=64, num_heads=2, ffn_dim=128, text_dim=32, text_layers=1, text_heads=2,
                 audio_dim=32, audio_layers=1, mel=MelConfig(n_mels=16), time_freq_dim=64, **overrides)
    torch.manual_seed(seed)
    model = DiT(cfg).eval()
    with torch.no_grad():  # the head starts at zero: perturb it so outputs depend on every weight
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def online_checkpoint(path, seed: int = 0, online: dict | None = ONLINE):
    model = small_dit(seed, attention="block_causal")
    return save_dit(path, model, extra={"step": 7, **({"online": online} if online else {})})


def test_export_bf16_roundtrip(tmp_path):
    run = tmp_path / "run"
    live, ema = small_dit(0), small_dit(1)
    save_dit(run / "dit.safetensors", live, extra={"step": 5, "train_config": {"flow": {"shift": 3.0}}})
    save_dit(run / "dit_ema.safetensors", ema, extra={"step": 5, "train_config": {"flow": {"shift": 3.0}}})
    out = export_dit(run, tmp_path / "out" / "model.safetensors")
    assert out.source.name == "dit_ema.safetensors" and out.dtype == "bf16"
    assert 0.45 < out.num_bytes / out.source_bytes < 0.55
    meta = read_metadata(out.path)
    assert meta["extra"]["step"] == 5 and meta["extra"]["train_config"]["flow"]["shift"] == 3.0
    assert meta["extra"]["export"] == {"run": str(run), "source": "dit_ema.safetensors", "dtype": "bf16"}

    loaded = load_dit(out.path).eval()  # bf16 on disk, cast on load into the fp32 model CPU inference uses
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    cfg, g = ema.cfg, torch.Generator().manual_seed(0)
    f = cfg.frames_per_chunk
    x = torch.randn(1, f, cfg.latent_channels, cfg.latent_height, cfg.latent_width, generator=g)
    mel = lambda: torch.randn(1, f + 1, cfg.mel.steps_per_frame, cfg.mel.n_mels, generator=g)  # noqa: E731
    refs = References([torch.randn(1, cfg.latent_channels, cfg.latent_height, cfg.latent_width, generator=g)],
                      ["global"])
    with torch.no_grad():
        text, mask = ema.encode_text(["she smiles"])
        cond = Conditioning(text, mask, mel(), mel(), 0, references=refs)
        want, got = ema(x, torch.full((1,), 0.5), cond), loaded(x, torch.full((1,), 0.5), cond)
    assert (got - want).norm() / want.norm() < 0.03  # bf16 weights: ~3 significant digits
    assert not torch.equal(got, want)

    plain = export_dit(run, tmp_path / "live.safetensors", ema=False, dtype="fp32")
    assert plain.source.name == "dit.safetensors" and abs(plain.num_bytes - plain.source_bytes) < 4096
    assert torch.equal(load_dit(plain.path).state_dict()["head.linear.weight"], live.state_dict()["head.linear.weight"])
    with pytest.raises(LpmError, match="does not exist"):
        export_dit(tmp_path / "nope", tmp_path / "x.safetensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LpmError, match="no dit_ema.safetensors or dit.safetensors"):
        export_dit(tmp_path / "empty", tmp_path / "x.safetensors")


def test_export_sets_the_kv_cache_shape(tmp_path):
    """``lpm export --cache SINK,WINDOW``: the same weights, a streamed cache of another shape."""
    src = save_dit(tmp_path / "model.safetensors", small_dit(0, attention="block_causal"), extra={"step": 1})
    assert main(["export", "--run", str(src), "--out", str(tmp_path / "w1.safetensors"), "--dtype", "fp32",
                 "--cache", "0,1"]) == 0
    narrow = load_dit(tmp_path / "w1.safetensors")
    assert (narrow.cfg.sink_chunks, narrow.cfg.window_chunks) == (0, 1)
    assert read_metadata(tmp_path / "w1.safetensors")["extra"]["export"]["cache"] == {"sink_chunks": 0,
                                                                                      "window_chunks": 1}
    wide = load_dit(src)
    assert all(torch.equal(v, wide.state_dict()[k]) for k, v in narrow.state_dict().items())
    with pytest.raises(LpmError, match="window chunks >= 1"):
        export_dit(src, tmp_path / "bad.safetensors", cache=(1, 0))
    with pytest.raises(SystemExit):  # argparse: a usage error naming the expected form
        main(["export", "--run", str(src), "--out", str(tmp_path / "x.safetensors"), "--cache", "one"])


def test_export_fewer_online_steps(tmp_path):
    """``lpm export --online-steps 1``: the first trained time, then 0; the engine then runs one forward per chunk."""
    src = online_checkpoint(tmp_path / "online.safetensors")
    out = export_dit(src, tmp_path / "one.safetensors", online_steps=1)
    meta = read_metadata(out.path)
    assert meta["extra"]["online"]["timesteps"] == [1.0, 0.0] and meta["extra"]["export"]["online_steps"] == 1
    assert meta["extra"]["online"]["sampler"] == "renoise"
    assert read_metadata(src)["extra"]["online"]["timesteps"] == [1.0, 0.75, 0.0]  # the source is untouched
    with pytest.raises(LpmError, match="must be 1..2, got 3"):
        export_dit(src, tmp_path / "x.safetensors", online_steps=3)
    plain = save_dit(tmp_path / "base.safetensors", small_dit(0), extra={"step": 1})
    with pytest.raises(LpmError, match="not an Online checkpoint"):
        export_dit(plain, tmp_path / "x.safetensors", online_steps=1)


def _frames_of_first_chunk(engine: DiTEngine) -> np.ndarray:
    pcm = (np.random.default_rng(0).standard_normal(SR) * 0.1).astype(np.float32)
    end = samples_for_frames(engine.frames_per_chunk + engine.lookahead_frames)
    return engine.step(ChunkInput(0, 0, pcm[:end], pcm[:end][::-1].copy(), end, "", 0.0))


def test_online_metadata_sets_engine_sampling(tmp_path, one_thread):
    path = str(online_checkpoint(tmp_path / "online.safetensors"))
    character = Character(images={"global": np.full((64, 64, 3), 128, np.uint8)})
    engine = DiTEngine.load(character, DiTEngineConfig(checkpoint=path, seed=4))
    assert engine.timesteps.tolist() == [1.0, 0.75, 0.0] and engine.sampler_name == "renoise"
    assert engine.refiner_time == 0.3  # null in the metadata: the default
    again = DiTEngine.load(character, DiTEngineConfig(checkpoint=path, seed=4))
    other = DiTEngine.load(character, DiTEngineConfig(checkpoint=path, seed=5))
    first = _frames_of_first_chunk(engine)
    assert np.array_equal(first, _frames_of_first_chunk(again))  # renoise draws from the session's generator
    assert not np.array_equal(first, _frames_of_first_chunk(other))

    explicit = DiTEngine.load(character, DiTEngineConfig(checkpoint=path, denoise_steps=3, sampler="euler",
                                                         refiner_time=0.2))
    assert len(explicit.timesteps) == 4 and explicit.sampler_name == "euler" and explicit.refiner_time == 0.2
    base = str(online_checkpoint(tmp_path / "base.safetensors", online=None))
    plain = DiTEngine.load(character, DiTEngineConfig(checkpoint=base))
    assert len(plain.timesteps) == 3 and plain.sampler_name == "euler"  # no metadata: today's behaviour
    bad = str(online_checkpoint(tmp_path / "bad.safetensors", online={"timesteps": [1.0, 1.0, 0.0]}))
    with pytest.raises(LpmError, match="decrease from 1.0 to 0.0"):
        DiTEngine.load(character, DiTEngineConfig(checkpoint=bad))


def _write_flac(path, pcm: np.ndarray, rate: int) -> None:
    """Encode ``(N,)`` float mono audio as flac with PyAV."""
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("flac", rate=rate)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray((pcm * 32767).astype(np.int16)[None], format="s16", layout="mono")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_load_audio_formats_rates_and_channels(tmp_path):
    t = np.arange(22050) / 22050
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)  # 1 s mono at 22.05 kHz
    _write_flac(tmp_path / "a.flac", tone, 22050)
    write_wav(tmp_path / "b.wav", np.stack([tone, tone]), 22050)  # stereo
    for name in ("a.flac", "b.wav"):
        pcm, damage = load_audio(tmp_path / name)
        assert not damage.any, damage
        assert pcm.dtype == np.float32 and abs(len(pcm) - SR) <= 1
        assert abs(np.sqrt(np.mean(pcm[1000:-1000] ** 2)) - 0.5 / np.sqrt(2)) < 0.02  # the tone survives
    (tmp_path / "c.mp3").write_bytes(b"not audio at all")
    with pytest.raises(LpmError, match="c.mp3"):
        load_audio(tmp_path / "c.mp3")


def test_generate_from_files(tmp_path, one_thread):
    import av

    checkpoint = online_checkpoint(tmp_path / "online.safetensors")
    rng = np.random.default_rng(0)
    t = np.arange(44100) / 44100
    voice = 0.3 * np.sin(2 * np.pi * 220 * t) * (t > 0.3)
    write_wav(tmp_path / "self.wav", np.stack([voice, 0.5 * voice]), 44100)  # 1 s, 44.1 kHz stereo
    _write_flac(tmp_path / "partner.flac", (rng.standard_normal(11025) * 0.05).clip(-1, 1), 22050)  # 0.5 s
    rgba = rng.integers(0, 255, (90, 140, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "face.png")  # RGBA, not square
    refs = tmp_path / "refs"
    refs.mkdir()
    Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8), "L").save(refs / "expr_happy.png")
    out = tmp_path / "out.mp4"
    rc = main(["generate", "--reference", str(tmp_path / "face.png"), "--refs", str(refs), "--audio",
               str(tmp_path / "self.wav"), "--partner", str(tmp_path / "partner.flac"), "--checkpoint",
               str(checkpoint), "--vae", DEFAULT_VAE, "--seed", "1", "--out", str(out)])
    assert rc == 0
    frames = read_mp4(out)
    assert frames.shape == (24, 128, 128, 3)  # exactly 1 s at 24 fps (the longer voice)
    with av.open(str(out)) as container:
        audio = container.streams.audio[0]
        assert audio.codec_context.channels == 2 and audio.codec_context.sample_rate == SR
        samples = sum(frame.samples for frame in container.decode(audio))
    assert abs(samples - SR) < 2048  # 1 s, give or take the AAC encoder's priming and last-frame padding


def test_generate_input_errors(tmp_path, monkeypatch):
    checkpoint = str(online_checkpoint(tmp_path / "online.safetensors"))
    write_wav(tmp_path / "self.wav", np.zeros(SR // 2, np.float32), SR)
    corrupt = tmp_path / "face.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    common = dict(out=str(tmp_path / "o.mp4"), audio=str(tmp_path / "self.wav"), checkpoint=checkpoint,
                  progress=False)
    with pytest.raises(LpmError, match="face.png"):
        generate(GenerateConfig(reference=str(corrupt), **common))
    with pytest.raises(LpmError, match="missing.png"):
        generate(GenerateConfig(reference=str(tmp_path / "missing.png"), **common))
    refs = tmp_path / "refs"
    refs.mkdir()
    Image.new("RGB", (8, 8)).save(refs / "expr_bored.png")
    with pytest.raises(LpmError, match="expr_bored.*body_front.png.*expr_happy.png"):
        generate(GenerateConfig(refs=str(refs), **common))
    with pytest.raises(LpmError, match="--audio"):
        generate(GenerateConfig(reference=str(corrupt), **{**common, "audio": None}))
    monkeypatch.chdir(tmp_path)  # the default checkpoint is a relative path: make sure it is missing
    with pytest.raises(LpmError, match="online_tiny.safetensors.*lpm export"):
        generate(GenerateConfig(reference=str(corrupt), **{**common, "checkpoint": DEFAULT_CHECKPOINT}))
    assert not (tmp_path / "o.mp4").exists()


def test_model_demo_is_side_by_side(tmp_path, one_thread):
    from lpm.world.demo import LABEL_H, PANEL, render_model_demo

    checkpoint = str(online_checkpoint(tmp_path / "online.safetensors"))
    out = render_model_demo(tmp_path / "demo.mp4", checkpoint, seed=1, seconds=0.5, progress=False)
    assert read_mp4(out).shape == (12, LABEL_H + PANEL, 2 * PANEL, 3)


def test_export_track_gain(tmp_path):
    """``lpm export --track-gain``: patterns expanded over the model's channels, gains of 1 dropped, '' removes the
    entry; a pattern matching nothing, a bad gain and a Base checkpoint are clear errors."""
    src = online_checkpoint(tmp_path / "online.safetensors")
    out = export_dit(src, tmp_path / "gain.safetensors", track_gain={"emo_*": 4, "brow_raise": "2", "smile": 1})
    online = read_metadata(out.path)["extra"]["online"]
    assert online["track_gain"] == {"emo_happy": 4.0, "emo_sad": 4.0, "emo_surprised": 4.0, "emo_angry": 4.0,
                                    "brow_raise": 2.0}
    assert online["timesteps"] == ONLINE["timesteps"]  # the rest of the sampling kept
    cleared = export_dit(out.path, tmp_path / "none.safetensors", track_gain={})
    assert "track_gain" not in read_metadata(cleared.path)["extra"]["online"]
    record = read_metadata(cleared.path)["extra"]["export"]  # an export of an export keeps the first record
    assert record["track_gain"] == {} and record["from"]["track_gain"]["brow_raise"] == 2.0
    with pytest.raises(LpmError, match="'emo', which matches none of the model's motion channels"):
        export_dit(src, tmp_path / "x.safetensors", track_gain={"emo": 4})
    with pytest.raises(LpmError, match=r"track_gain\['smile'\] must be in \(0, 20\]"):
        export_dit(src, tmp_path / "x.safetensors", track_gain={"smile": -1})
    plain = save_dit(tmp_path / "base.safetensors", small_dit(0), extra={"step": 1})
    base = export_dit(plain, tmp_path / "b.safetensors", track_gain={"smile": 2}, base_steps=16)
    assert read_metadata(base.path)["extra"]["base"] == {"track_gain": {"smile": 2.0}, "steps": 16}  # a Base's
    main(["export", "--run", str(plain), "--out", str(tmp_path / "g.safetensors"), "--base-guidance",
          "text=1, audio_self=1.5"])
    assert read_metadata(tmp_path / "g.safetensors")["extra"]["base"] == {"guidance": {"text": 1.0, "audio_self": 1.5}}
    with pytest.raises(SystemExit):  # argparse names the bad item
        main(["export", "--run", str(plain), "--out", str(tmp_path / "x.safetensors"), "--base-guidance", "text"])
    with pytest.raises(LpmError, match="not a Base"):
        export_dit(src, tmp_path / "x.safetensors", base_steps=16)
    no_online = online_checkpoint(tmp_path / "causal.safetensors", online=None)
    with pytest.raises(LpmError, match="not an Online checkpoint"):
        export_dit(no_online, tmp_path / "x.safetensors", track_gain={"smile": 2})
    main(["export", "--run", str(src), "--out", str(tmp_path / "cli.safetensors"), "--track-gain", "head_*=2.5"])
    assert set(read_metadata(tmp_path / "cli.safetensors")["extra"]["online"]["track_gain"].values()) == {2.5}
    with pytest.raises(SystemExit):  # argparse: a usage error naming the item
        main(["export", "--run", str(src), "--out", str(tmp_path / "x.safetensors"), "--track-gain", "smile:2"])


def test_track_gain_scales_only_the_predicted_track(tmp_path, one_thread):
    """The engine's track gain equals multiplying the speech network's prediction by hand; a gain of 1 is no gain;
    a given track (training) is never scaled; an unknown channel in the checkpoint is an engine error."""
    path = str(online_checkpoint(tmp_path / "online.safetensors"))
    gained = str(export_dit(path, tmp_path / "gained.safetensors", dtype="fp32",
                            track_gain={"emo_*": 3, "head_pitch": 2}).path)
    character = Character(images={"global": np.full((64, 64, 3), 128, np.uint8)})
    plain = DiTEngine.load(character, DiTEngineConfig(checkpoint=path, seed=1))
    engine = DiTEngine.load(character, DiTEngineConfig(checkpoint=gained, seed=1))
    names = engine.model.cfg.motion_channels
    assert engine.track_gain[names.index("emo_sad")] == 3 and engine.track_gain[names.index("head_pitch")] == 2
    assert engine.track_gain.sum() == len(names) - 5 + 4 * 3 + 2
    by_hand = DiTEngine.load(character, DiTEngineConfig(checkpoint=path, seed=1))
    predict = by_hand.model.predict_motion
    by_hand.model.predict_motion = lambda cond, first, num: predict(cond, first, num) * engine.track_gain
    got = _frames_of_first_chunk(engine)
    assert np.array_equal(got, _frames_of_first_chunk(by_hand))
    ungained = _frames_of_first_chunk(plain)
    assert not np.array_equal(got, ungained)
    ones = DiTEngine.load(character, DiTEngineConfig(checkpoint=gained, seed=1, track_gain={"smile": 1.0}))
    assert ones.track_gain is None and np.array_equal(_frames_of_first_chunk(ones), ungained)

    model = small_dit(0)  # a given track (as in training) passes unscaled
    f, p = 2, len(model.cfg.motion_channels)
    mel = torch.randn(1, 8, 4, 16)
    given = torch.rand(1, f, p)
    cond = Conditioning(torch.zeros(1, 1, 32), torch.ones(1, 1, dtype=torch.bool), mel, mel, motion=given,
                        track_gain=torch.full((p,), 5.0))
    assert torch.equal(model._motion(cond, 2, f).track, given)
    assert torch.allclose(model.predict_motion(cond, 2, f),
                          5 * model.predict_motion(dataclasses.replace(cond, track_gain=None), 2, f))

    with pytest.raises(LpmError, match="'emo_joy', which matches none"):
        DiTEngine.load(character, DiTEngineConfig(checkpoint=path, track_gain={"emo_joy": 2}))


def test_track_range_bounds_only_the_predicted_track(tmp_path, one_thread):
    """``lpm export --track-range DATA`` stores the percentile range of DATA's true train motion; the engine clips
    the gained, predicted track to it (equal to clipping by hand), never a given track; '' removes it; a malformed
    range is a clear error."""
    import fnmatch

    from lpm.models.motion_track import RANGE_PERCENTILES, bound_track, measured_track_range, track_range_tensor
    from lpm.world.synth import plan, synth

    data = tmp_path / "world"
    synth(data, plan(clips=2, seed=2, seconds=0.5, res=64, split="train"), workers=1, progress=False)
    path = str(online_checkpoint(tmp_path / "online.safetensors"))
    channels = load_dit(path).cfg.motion_channels
    measured = measured_track_range(data, channels)
    motion = np.concatenate([np.load(p)["values"] for p in sorted(data.glob("*/motion.npz"))])
    names = list(np.load(next(data.glob("*/motion.npz")))["names"])
    face = next(c for c in measured if not c.startswith("head_"))
    for name in ("head_pitch", face):  # each channel at its own percentiles
        rule = next(p for pattern, p in RANGE_PERCENTILES.items() if fnmatch.fnmatchcase(name, pattern))
        want = np.percentile(motion[:, names.index(name)], rule)
        assert np.allclose(measured[name], want, atol=1e-3) and want[0] < want[1]
    assert RANGE_PERCENTILES["head_*"] != RANGE_PERCENTILES["*"]
    only_pitch = measured_track_range(data, channels, percentiles={"head_pitch": (40, 60)})
    (lo, hi), (wide_lo, wide_hi) = only_pitch["head_pitch"], measured["head_pitch"]
    assert set(only_pitch) == {"head_pitch"} and wide_lo <= lo < hi <= wide_hi and hi - lo < wide_hi - wide_lo
    out = export_dit(path, tmp_path / "ranged.safetensors", dtype="fp32", track_gain={"head_*": 20},
                     track_range=data)
    online = read_metadata(out.path)["extra"]["online"]
    assert online["track_range"] == {k: list(v) for k, v in measured.items()} and online["track_gain"]
    assert out.track_range == measured
    bounds = track_range_tensor(online["track_range"], channels)  # (2, P) in track units: degrees / 10
    assert bounds.shape == (2, len(channels))
    assert torch.isclose(bounds[0, channels.index("head_pitch")], torch.tensor(measured["head_pitch"][0] / 10))

    character = Character(images={"global": np.full((64, 64, 3), 128, np.uint8)})
    engine = DiTEngine.load(character, DiTEngineConfig(checkpoint=str(out.path), seed=1))
    unbounded = DiTEngine.load(character, DiTEngineConfig(checkpoint=str(out.path), seed=1, track_range={}))
    assert engine.track_range is not None and unbounded.track_range is None
    predict = unbounded.model.predict_motion
    seen = []

    def by_hand(cond, first, num):
        track = predict(cond, first, num)
        seen.append(track)
        return bound_track(track, engine.track_range)

    unbounded.model.predict_motion = by_hand
    got = _frames_of_first_chunk(engine)
    assert np.array_equal(got, _frames_of_first_chunk(unbounded))
    head = [channels.index(c) for c in ("head_yaw", "head_pitch", "head_roll")]
    outside = (seen[0][..., head] < bounds[0, head]) | (seen[0][..., head] > bounds[1, head])
    assert outside.any()  # x20 takes the head out of the range: the bound did something

    model = small_dit(0)  # a given track (as in training) passes unclipped
    f, p = 2, len(model.cfg.motion_channels)
    mel = torch.randn(1, 8, 4, 16)
    given = torch.full((1, f, p), 7.0)
    tight = torch.stack([torch.full((p,), -0.01), torch.full((p,), 0.01)])
    cond = Conditioning(torch.zeros(1, 1, 32), torch.ones(1, 1, dtype=torch.bool), mel, mel, motion=given,
                        track_range=tight)
    assert torch.equal(model._motion(cond, 2, f).track, given)
    assert model.predict_motion(cond, 2, f).abs().max() <= 0.01

    cleared = export_dit(out.path, tmp_path / "none.safetensors", track_range="")
    assert "track_range" not in read_metadata(cleared.path)["extra"]["online"] and cleared.track_range == {}
    with pytest.raises(LpmError, match=r"track_range\['head_pitch'\] must be finite with lo < hi"):
        DiTEngine.load(character, DiTEngineConfig(checkpoint=path, track_range={"head_pitch": [3, -3]}))
    with pytest.raises(LpmError, match="'jaw', which is not one of the model's motion channels"):
        DiTEngine.load(character, DiTEngineConfig(checkpoint=path, track_range={"jaw": [0, 1]}))
    with pytest.raises(LpmError, match="no clip carries true motion"):
        measured_track_range(data, ("no_such_channel",))
    main(["export", "--run", path, "--out", str(tmp_path / "cli.safetensors"), "--track-range", str(data)])
    assert read_metadata(tmp_path / "cli.safetensors")["extra"]["online"]["track_range"]["head_pitch"]


def test_brow_exemplar_is_stored_by_export_and_drawn_by_the_engine(tmp_path, one_thread):
    """``lpm export --brow-exemplar LO,HI`` stores the bounds in ``extra["online"]``; the engine passes them to the
    DiT (``DiTEngineConfig.brow_exemplar`` overrides, () turns it off): the frames change where the character has a
    surprised exemplar and not where it has none; '' removes it; bad bounds, a Base checkpoint and a model without
    the expression canvas are clear errors."""
    model = small_dit(0, attention="block_causal", reference_residual=True, expression_canvas=True,
                      expression_blend=True)
    path = save_dit(tmp_path / "canvas.safetensors", model, extra={"online": ONLINE})
    out = export_dit(path, tmp_path / "brow.safetensors", dtype="fp32", brow_exemplar="-10,-9")
    assert read_metadata(out.path)["extra"]["online"]["brow_exemplar"] == [-10.0, -9.0]
    assert online_sampling_of(out.path).brow_exemplar == (-10.0, -9.0)  # every frame's brow is above -9: whole
    gray = np.full((64, 64, 3), 128, np.uint8)
    surprised = np.zeros((64, 64, 3), np.uint8)
    with_exemplar = Character(images={"global": gray, "expr_surprised": surprised})
    lifted = DiTEngine.load(with_exemplar, DiTEngineConfig(checkpoint=str(out.path), seed=1))
    off = DiTEngine.load(with_exemplar, DiTEngineConfig(checkpoint=str(out.path), seed=1, brow_exemplar=()))
    assert lifted.brow_exemplar == (-10.0, -9.0) and off.brow_exemplar is None
    assert not np.array_equal(_frames_of_first_chunk(lifted), _frames_of_first_chunk(off))
    without = Character(images={"global": gray})
    assert np.array_equal(
        _frames_of_first_chunk(DiTEngine.load(without, DiTEngineConfig(checkpoint=str(out.path), seed=1))),
        _frames_of_first_chunk(DiTEngine.load(without, DiTEngineConfig(checkpoint=str(out.path), seed=1,
                                                                        brow_exemplar=()))))
    removed = export_dit(out.path, tmp_path / "removed.safetensors", dtype="fp32", brow_exemplar="")
    assert "brow_exemplar" not in read_metadata(removed.path)["extra"]["online"]
    with pytest.raises(LpmError, match="--brow-exemplar: expected finite lo < hi"):
        export_dit(path, tmp_path / "bad.safetensors", brow_exemplar="0.9,0.1")
    with pytest.raises(LpmError, match="without expression_canvas"):
        export_dit(online_checkpoint(tmp_path / "plain.safetensors"), tmp_path / "x.safetensors", brow_exemplar="0,1")
    with pytest.raises(EngineError, match="brow_exemplar"):
        DiTEngine.load(with_exemplar, DiTEngineConfig(checkpoint=str(out.path), brow_exemplar=(1.0, 0.0)))
