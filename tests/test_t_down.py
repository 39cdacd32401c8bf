"""A temporally compressed latent (``DiTConfig.t_down``): the DiT, its audio and the streaming engine in latent
frames of ``t_down`` video frames, derived from one config value."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from lpm.audio.mel import LogMel, MelConfig, per_latent_frame
from lpm.config import ConfigError
from lpm.models.causal_vae import CausalVAE, CausalVAEConfig
from lpm.models.conditioning import Conditioning, References
from lpm.models.dit import DiT
from lpm.models.dit_config import DiTConfig
from lpm.models.kv_cache import KVCache
from lpm.models.vae import LpmVAE, VAEConfig
from lpm.runtime.dit_engine import DiTEngine, DiTEngineConfig
from lpm.runtime.engines import Character, ChunkInput, EngineError, samples_for_frames
from lpm.runtime.session import Session, SessionConfig

SR = 16000


def config(**kw) -> DiTConfig:
    base = dict(latent_height=4, latent_width=4, dim=32, num_blocks=2, num_heads=2, ffn_dim=64, text_dim=16,
                text_layers=1, text_heads=2, audio_dim=16, audio_layers=1, attention="block_causal",
                frames_per_chunk=2, window_chunks=2, sink_chunks=1)
    return DiTConfig(**{**base, **kw})


def test_derived_sizes_follow_t_down():
    cfg = config(t_down=4, mel=MelConfig(n_mels=16))
    assert cfg.mel_steps_per_frame == 16 and cfg.video_frames_per_chunk == 8
    assert config(mel=MelConfig(n_mels=16)).video_frames_per_chunk == 2  # t_down 1: today's clock
    with pytest.raises(ConfigError, match="t_down must be >= 1"):
        config(t_down=0)
    with pytest.raises(ConfigError, match="divisible by audio_tokens_per_frame 3"):
        config(t_down=2, audio_tokens_per_frame=3)
    mel = torch.randn(1, 12, 4, 16)
    assert per_latent_frame(mel, 4).shape == (1, 3, 16, 16)
    assert torch.equal(per_latent_frame(mel, 4)[:, 1, 4:8], mel[:, 5])  # latent 1 = video frames 4..7 in order
    with pytest.raises(ValueError, match="10 video frames are not a whole number of latent frames of 4"):
        per_latent_frame(mel[:, :10], 4)


def test_t_down_4_dit_is_the_per_frame_dit_at_a_quarter_of_the_frame_rate():
    """A DiT on latent frames of 4 video frames (24 fps audio, 4 mel steps per video frame) computes exactly
    what a t_down = 1 DiT at 6 fps with 16 mel steps per frame computes: chunk, windows, RoPE time and audio all
    count latent frames, and the grouped mel equals the 6 fps mel step for step."""
    torch.manual_seed(0)
    track = dict(motion_channels=("jaw_open", "blink_l"), speech_dim=16, speech_dilations=(1, 2))
    cfg4 = config(t_down=4, mel=MelConfig(n_mels=16), **track)
    cfg1 = config(t_down=1, mel=MelConfig(n_mels=16, fps=6, steps_per_frame=16), **track)
    model4 = DiT(cfg4).double().eval()
    with torch.no_grad():
        for p in (model4.head.linear.weight, *model4.motion_embed.parameters()):
            p.normal_(0, 0.1)  # zero-initialised outputs would hide the head and the motion track
    model1 = DiT(cfg1).double().eval()
    model1.load_state_dict(model4.state_dict())
    pcm = torch.from_numpy(np.random.default_rng(0).standard_normal((1, SR * 2)) * 0.1).float()
    mel4 = per_latent_frame(LogMel(cfg4.mel)(pcm), 4).double()  # (1, 12, 16, 16): 48 video frames
    mel1 = LogMel(cfg1.mel)(pcm).double()  # (1, 12, 16, 16)
    torch.testing.assert_close(mel4, mel1, rtol=1e-5, atol=1e-5)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 8, 8, 4, 4, generator=g, dtype=torch.float64)
    t = torch.rand(1, 8, generator=g, dtype=torch.float64)
    text, mask = model4.encode_text(["hello"])
    refs = References([torch.randn(1, 8, 4, 4, generator=g, dtype=torch.float64)], ["global"])
    cond = Conditioning(text.double(), mask, mel4[:, :10], mel4.flip(1)[:, :10], 0, references=refs)
    with torch.no_grad():
        out4, out1 = model4(x, t, cond), model1(x, t, cond)
        torch.testing.assert_close(out4, out1, rtol=0, atol=0)
        # Streamed chunk by chunk through the cache (past eviction: 4 chunks, window 2) equals the full forward.
        cache, outs = KVCache.empty(cfg4, 1, dtype=torch.float64), []
        for c in range(4):
            start, end = model4.audio_frame_range(2 * c, 2)
            chunk = dataclasses.replace(cond, audio_self=cond.audio_self[:, start:end],
                                        audio_partner=cond.audio_partner[:, start:end], audio_start_frame=start)
            outs.append(model4(x[:, 2 * c:2 * c + 2], t[:, 2 * c:2 * c + 2], chunk, cache=cache, update_cache=True))
        torch.testing.assert_close(torch.cat(outs, 1), out4, rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError, match="4 mel steps per frame, the DiT reads 16 per latent frame"):
        model4(x, t, dataclasses.replace(cond, audio_self=mel4[:, :10, :4], audio_partner=mel4[:, :10, :4]))


def engine_parts(t_down: int) -> tuple[DiT, CausalVAE]:
    torch.manual_seed(0)
    # Windows count latent frames: 4 latent frames of partner speech are 16 video frames (0.67 s) at t_down 4.
    model = DiT(config(t_down=t_down, mel=MelConfig(n_mels=16), latent_channels=4, self_audio_before_frames=1,
                       partner_audio_before_frames=4)).eval()
    codec = CausalVAE(CausalVAEConfig(latent_channels=4, t_down=t_down, channels=(8, 8), norm_groups=4)).eval()
    return model, codec


def test_engine_and_session_run_on_video_frames_derived_from_t_down(one_thread):
    model, codec = engine_parts(4)
    character = Character(images={"global": np.random.default_rng(0).integers(0, 255, (20, 24, 3), np.uint8)})
    engine = DiTEngine(model, codec, character, DiTEngineConfig(seed=3))
    assert engine.frames_per_chunk == 8 and engine.lookahead_frames == 4  # 2 latent frames, 1 latent lookahead
    pcm = (np.random.default_rng(1).standard_normal(SR * 3) * 0.1).astype(np.float32)
    f, la, sequential, sizes, prev = engine.frames_per_chunk, engine.lookahead_frames, [], [], 0
    for k in range(8):
        end = samples_for_frames((k + 1) * f + la)
        chunk = ChunkInput(k, k * f, pcm[prev:end], pcm[::-1][prev:end].copy(), end, "", 0.0)
        prev = end
        sequential.append(engine.step(chunk))
        sizes.append((engine.cache.nbytes(), *(r.frames.shape[1] for r in engine.features)))
    assert sequential[0].shape == (8, 16, 16, 3) and engine.cache.chunks_seen == 8
    assert len(set(sizes[5:])) == 1  # memory flat once the window is full
    piped = DiTEngine(model, codec, character, DiTEngineConfig(seed=3))
    with Session(piped, SessionConfig(realtime=False, vad="off")) as session:
        session.push_self_audio(pcm, native=True)
        session.push_partner_audio(pcm[::-1].copy(), native=True)
        session.finish()
        frames = [image for _, image in session.frames()]
    assert len(frames) >= 64
    diff = np.abs(np.stack(frames[:64]).astype(int) - np.concatenate(sequential).astype(int)).max()
    assert diff <= 1  # the Session's clock (video frames) runs the t_down = 4 engine exactly as a manual loop


def test_engine_refuses_a_codec_of_another_frame_rate():
    model, _ = engine_parts(4)
    per_frame = LpmVAE(VAEConfig(latent_channels=4, channels=(8, 8), norm_groups=4))
    character = Character(images={"global": np.zeros((16, 16, 3), np.uint8)})
    with pytest.raises(EngineError, match="codec compresses 1 video frames per latent frame, the DiT expects t_down 4"):
        DiTEngine(model, per_frame, character)


def test_latent_cache_and_base_trainer_at_t_down_2(tmp_path, one_thread):
    """The cache groups every per-frame field by latent frame, and the Base trainer trains a t_down 2 DiT on it."""
    import json

    from base_fixtures import MICRO, make_dataset
    from lpm.data.clip import read_clip
    from lpm.models.latent_codec import load_codec
    from lpm.training.base_trainer import BaseTrainer, load_base_config
    from lpm.training.latent_cache import encode_clip, frame_mel
    from lpm.world.motion import MOTION_NAMES

    data = make_dataset(tmp_path / "data")
    torch.manual_seed(0)
    vae = CausalVAE(CausalVAEConfig(latent_channels=4, t_down=2, channels=(8, 8), norm_groups=4)).save(
        tmp_path / "causal.safetensors")
    codec = load_codec(str(vae))
    mel_cfg = MelConfig(n_mels=8)
    clip = encode_clip(data / "c0", codec, LogMel(mel_cfg))
    raw = read_clip(data / "c0")
    f = raw.video.shape[0]
    assert clip.latents.shape[0] == f // 2 and clip.mel.shape == (2, f // 2, 2 * mel_cfg.steps_per_frame, 8)
    expected_mel = frame_mel(LogMel(mel_cfg), raw.audio[[0, 1]], f)
    assert torch.equal(clip.mel[:, 1], torch.cat([expected_mel[:, 2], expected_mel[:, 3]], 1))
    jaw = raw.motion[:, raw.motion_names.index("jaw_open")].float()
    assert torch.allclose(clip.motion[:, MOTION_NAMES.index("jaw_open")], jaw.reshape(-1, 2).mean(1))
    assert torch.equal(clip.states, raw.states[1::2])
    assert clip.coverage is None or clip.coverage.shape[0] == f // 2
    cfg = load_base_config("tiny", None, [*MICRO, "model.t_down=2", "model.mel.n_mels=8", "steps=2",
                                          f"cache_dir={tmp_path / 'cache'}"])
    BaseTrainer(cfg, data, str(vae), tmp_path / "base").run()
    rows = [json.loads(r) for r in (tmp_path / "base" / "log.jsonl").read_text().splitlines() if '"loss"' in r]
    assert rows and all(np.isfinite(r["loss"]) for r in rows)
