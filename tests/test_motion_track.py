"""The motion track: the speech -> motion network's causality and lookahead, the track in the DiT (streaming
equals the full forward past the network's reach, a zero-output embedding changes nothing, per-sample choice
of true vs predicted track), the x0-space loss, the audio-use diagnostics on cases with a known answer, and
``lpm train speech`` on a micro world."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from base_fixtures import MICRO, make_dataset, make_vae
from lpm.diffusion.flow import Batch, FlowConfig, FlowMatching
from lpm.events import match_events
from lpm.models.motion_track import SpeechMotion, to_track
from lpm.models.reactions import estimate_templates, fire, onset_events, onset_targets, place
from lpm.training.diagnostics import GapCheck, gap
from lpm.world.motion import MOTION_NAMES
from test_dit import make_inputs, make_model, micro, stream


def test_speech_motion_reads_own_speech_with_lookahead_and_partner_causally():
    torch.manual_seed(0)
    net = SpeechMotion(8, 4, ("jaw_open", "head_pitch"), 16, (1, 2), lookahead=1).double().eval()
    assert net.history_frames == 6
    own, partner = torch.randn(2, 1, 20, 4, 8, dtype=torch.float64)
    with torch.no_grad():
        ref = net(own, partner)
        for stream_mel, name, reach in ((own, "own", 1), (partner, "partner", 0)):
            k = 10
            changed_mel = stream_mel.clone()
            changed_mel[:, k:] += 3.0
            out = net(changed_mel, partner) if name == "own" else net(own, changed_mel)
            diff = (out - ref).abs().amax(-1)[0] > 1e-12  # (Fa,) per frame
            # Frame f reads its stream up to f + reach: frames < k - reach are untouched, frame k - reach is not.
            assert not diff[:k - reach].any() and diff[k - reach]
            # Nothing older than the network's history matters.
            old = stream_mel.clone()
            old[:, :2] -= 4.0
            out = net(old, partner) if name == "own" else net(own, old)
            assert torch.allclose(out[:, 2 + net.history_frames + 1:], ref[:, 2 + net.history_frames + 1:])


def test_reactions_fire_once_at_the_likely_onset_and_place_whole_templates():
    # Hazard spread evenly over 10 frames after a cue, 0.85 in total (the world's nod: probability 0.85, delay drawn
    # from 0.2-0.6 s): one reaction fires, where half the mass has arrived, not at every frame above a level.
    hazard = torch.zeros(1, 40, 2)
    hazard[0, 10:20, 0] = 0.085
    onsets = fire(hazard, window=10)
    assert onsets[0, :, 0].nonzero().flatten().tolist() == [15] and onsets[0, :, 1].sum() == 0
    # The window is causal: hazard after frame 15 does not move the onset.
    later = hazard.clone()
    later[0, 16:, 0] = 0.9
    assert fire(later, window=10)[0, :16, 0].nonzero().flatten().tolist() == [15]
    templates = torch.zeros(2, 4, 3)
    templates[0, :, 1] = torch.tensor([-1.0, -2.0, -1.0, 0.0])
    track = place(onsets, templates)  # (1, 40, 3)
    assert track[0, 15:19, 1].tolist() == [-1.0, -2.0, -1.0, 0.0] and track[0, :15].abs().sum() == 0
    assert track[0, 19:].abs().sum() == 0 and track[0, :, [0, 2]].abs().sum() == 0


def test_reaction_templates_are_the_mean_shape_and_tilts_keep_their_size():
    length = 6
    nod = torch.tensor([0.0, -1.0, -2.0, -1.0, 0.0, 0.0])
    tracks, onsets = [], []
    for frame, depth, sign in [(5, 1.0, 1), (12, 3.0, 1), (20, 2.0, -1)]:
        nods, tilts = torch.full((40, 2), 0.5), torch.full((40, 2), -0.5)  # levels the departure is measured from
        nods[frame:frame + length, 0] += depth * nod  # kind 0: nods, always down
        tilts[frame:frame + length, 1] += sign * 2 * nod.abs()  # kind 1: tilts, either way
        tracks += [nods, tilts]
        onsets.append(onset_targets([("nod", frame), ("blink", 3)], ("nod", "head_tilt"), 40))
        onsets.append(onset_targets([("head_tilt", frame)], ("nod", "head_tilt"), 40))
    assert onsets[0].sum() == 1  # the blink is not a reaction kind
    t = estimate_templates(tracks, onsets, length)
    assert torch.allclose(t[0, :, 0], 2.0 * nod)  # mean depth 2, downward
    assert torch.allclose(t[1, :, 1], 2 * nod.abs())  # two of three tilts go up: the majority's side, full size
    assert t[0, :, 1].abs().sum() == 0 and t[1, :, 0].abs().sum() == 0
    # Unaligned, the tilts would average to a third of their size.
    assert t[1, :, 1].sum() > 2.9 * torch.stack([tr[12:18, 1] - tr[11, 1] for tr in tracks[1::2]]).mean(0).sum()


def test_a_nod_template_is_the_pitch_dip_even_where_the_yaw_wanders_more():
    # Nods always go down on pitch (channel 0), then the pitch wanders; the head's yaw (channel 1) wanders either way
    # by more energy per event. Aligned on the channel that moves most, the template was the aligned wander (a yaw
    # ramp) and no dip; aligned on pitch's sum over the window, the wander after the dip set the side.
    g = torch.Generator().manual_seed(0)
    length, events = 24, 400
    dip = torch.zeros(length)
    dip[1:9] = -torch.sin(torch.linspace(0, torch.pi, 8))
    tracks, onsets = [], []
    for _ in range(events):
        tr = torch.zeros(length + 2, 2)
        tr[1:length + 1, 0] = (0.6 + 0.4 * torch.rand(1, generator=g)) * dip
        tr[9:, 0] += torch.randn(length - 7, generator=g).cumsum(0) * 0.1  # the pitch wanders after the dip
        tr[1:, 1] = torch.randn(length + 1, generator=g).cumsum(0) * 0.15  # a random walk from the frame before
        tracks.append(tr)
        onsets.append(onset_targets([("nod", 1)], ("nod",), length + 2))
    d = torch.stack([tr[1:length + 1] - tr[0] for tr in tracks])
    assert d[..., 1].pow(2).sum(1).mean() > 1.5 * d[..., 0].pow(2).sum(1).mean()  # the yaw has more energy
    t = estimate_templates(tracks, onsets, length)[0]  # (L, 2)
    assert torch.allclose(t[:9, 0], 0.8 * dip[:9], atol=0.05)  # the mean dip, downward
    assert t[9:, 0].abs().max() < 0.1  # and the wander after it averages out
    assert t[:, 1].abs().max() < 0.25 * d[..., 1].abs().mean()  # the wander averages out instead of a ramp


def test_onset_matching_counts_hits_within_the_tolerance_once():
    true = torch.zeros(50, 2)
    true[[10, 30], 0] = 1
    fired = torch.zeros(50, 2)
    fired[[14, 16, 45], 0] = 1  # 14 hits 10 (16 is a duplicate), 45 is 15 frames from 30: a miss
    fired[30, 1] = 1  # right frame, wrong kind
    kinds = ("nod", "head_tilt")
    m = match_events(onset_events(true, kinds), onset_events(fired, kinds))  # the bench's matching
    hits = m.true_positives
    assert (hits + m.false_negatives, hits + m.false_positives, hits) == (2, 4, 1)
    assert [(t.frame, d.frame) for t, d in m.pairs] == [(10, 14)]  # a delay of 4 frames
    assert m.f1 == pytest.approx(2 / 6)


def test_streaming_with_the_track_equals_the_full_forward_past_its_reach():
    # A short reach (6 frames of convolutions + 3 of hazard window + 4 of template), so later chunks get their audio
    # from mid-stream, not from frame 0, and reactions fired in one chunk carry into the next.
    model = make_model(micro(speech_dilations=(1, 2), reaction_frames=5, reaction_window=3))
    assert model.cfg.speech_history_frames == 6 + 3 + 4 and model.audio_margin()[0] >= 13
    speech = model.speech_motion
    with torch.no_grad():  # reactions that fire now and then, with visible shapes
        speech.templates.normal_(0, 1.0, generator=torch.Generator().manual_seed(3))
        torch.nn.init.normal_(speech.onset.weight, 0, 2.0)
        speech.onset.bias.fill_(-2.0)
    x, t, cond = make_inputs(model)
    with torch.no_grad():
        fired = fire(torch.sigmoid(speech.heads(cond.audio_self, cond.audio_partner)[1]), speech.reaction_window)
        assert 0 < fired.sum() < fired.numel() / 4
        full = model(x, t, cond)
    streamed = stream(model, x, t, cond)
    assert (streamed - full).abs().max() <= 1e-10 * full.abs().max()


def test_zero_output_track_changes_nothing_and_given_track_is_used():
    with_track = make_model(micro())
    without = make_model(micro(motion_channels=()))
    assert with_track.cfg.motion_spatial  # the tiny preset's per-token path
    new = ("speech_motion.", "motion_embed.", "motion_map")
    without.load_state_dict({k: v for k, v in with_track.state_dict().items() if not k.startswith(new)})
    x, t, cond = make_inputs(with_track)
    with torch.no_grad():
        with_track.motion_embed.zero_output()
        with_track.motion_map.zero_()
        assert torch.allclose(with_track(x, t, cond), without(x, t, cond), atol=1e-12)
        with_track.motion_map.normal_(0, 0.3)  # the per-token path alone moves the output
        assert (with_track(x, t, cond) - without(x, t, cond)).abs().max() > 1e-6
        torch.nn.init.normal_(with_track.motion_embed.mlp[2].weight, 0, 0.3)
        f, p = x.shape[1], len(with_track.cfg.motion_channels)
        predicted = with_track(x, t, cond)
        track = torch.randn(1, f, p, dtype=x.dtype)
        given = with_track(x, t, dataclasses.replace(cond, motion=track))
        assert (given - predicted).abs().max() > 1e-6
        # motion_from_audio picks the prediction per sample, even when a track is given.
        picked = with_track(x, t, dataclasses.replace(cond, motion=track, motion_from_audio=torch.tensor([True])))
        assert torch.allclose(picked, predicted, atol=1e-12)


def test_to_track_scales_channels():
    motion = torch.zeros(3, len(MOTION_NAMES))
    motion[:, MOTION_NAMES.index("head_pitch")] = 10.0
    motion[:, MOTION_NAMES.index("jaw_open")] = 0.5
    track = to_track(motion, MOTION_NAMES, ("jaw_open", "head_pitch"))
    assert torch.allclose(track, torch.tensor([[0.5, 1.0]] * 3))
    with pytest.raises(ValueError, match="nope"):
        to_track(motion, MOTION_NAMES, ("nope",))


def test_x0_space_loss_weighs_every_time_alike():
    x_0 = torch.randn(2, 2, 3, 4, 4)
    noise = torch.randn_like(x_0)
    off = 0.1

    def model(x_t, t, cond):  # an x0 predictor that is off by a constant
        return x_0 + off

    for t in (0.05, 0.5, 0.95):
        ts = torch.full((2,), t)
        x0_loss = FlowMatching(FlowConfig(loss_space="x0")).loss(model, Batch(x_0, None, None, ts, noise)).loss
        v_loss = FlowMatching(FlowConfig()).loss(model, Batch(x_0, None, None, ts, noise)).loss
        assert abs(float(x0_loss) - off**2) < 1e-6
        assert abs(float(v_loss) - off**2 / max(t, 0.05) ** 2) < 1e-4 * float(v_loss)


class _AudioModel(torch.nn.Module):
    """A 'DiT' whose x0 prediction is the mean of the own-speech mel (uses audio) or a constant (does not)."""

    def __init__(self, uses_audio: bool) -> None:
        super().__init__()
        self.uses_audio = uses_audio

    def forward(self, x_t, t, cond):
        level = cond.mel_self.mean(dim=(1, 2, 3)) if self.uses_audio else torch.zeros(x_t.shape[0])
        return torch.zeros_like(x_t) + level[:, None, None, None, None]


def _check(mel_self: torch.Tensor) -> GapCheck:
    from lpm.training.conditioned import ConditionBatch

    b = mel_self.shape[0]
    # The clean frames follow the voice (their level is the mel's mean), plus detail no input explains.
    x_0 = mel_self.mean(dim=(1, 2, 3))[:, None, None, None, None] + 0.1 * torch.randn(
        b, 2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    cond = ConditionBatch([""] * b, mel_self, torch.zeros_like(mel_self), 0, {}, None, -11.5)
    batch = Batch(x_0, cond, noise=torch.randn_like(x_0))
    return GapCheck("gap_own_audio", batch, torch.ones(b, 2, 4, 4),
                    lambda c: dataclasses.replace(c, mel_self=c.mel_self.roll(1, 0)), predicted_track=True)


def test_audio_gap_is_zero_without_audio_use_and_positive_with_it():
    flow = FlowMatching(FlowConfig())
    varied = torch.randn(4, 6, 4, 8, generator=torch.Generator().manual_seed(1))
    varied = varied + torch.arange(4.0)[:, None, None, None]  # four distinct voices
    same = varied[:1].expand(4, -1, -1, -1).clone()
    assert gap(_AudioModel(True), flow, _check(same)) == 0.0  # every window has the same voice
    assert gap(_AudioModel(False), flow, _check(varied)) == 0.0  # the model ignores its audio
    assert gap(_AudioModel(True), flow, _check(varied)) > 0.1


def test_train_speech_learns_the_jaw_and_loads_into_a_dit(tmp_path):
    from lpm.training.checkpoint import read_metadata
    from lpm.training.speech_trainer import FIRE_LEVELS, SpeechTrainConfig, SpeechTrainer, load_speech_into

    data = make_dataset(tmp_path / "data")
    cfg = SpeechTrainConfig(steps=40, batch=4, frames=8, lr=3e-3, warmup_steps=0, eval_every=20, threads=1)
    result = SpeechTrainer(cfg, data, tmp_path / "run").run()
    assert {"f1", "true", "fired", "hits"} <= set(result["val"]["reactions"])
    assert result["fire_level"] in FIRE_LEVELS and set(result["calibration_onset_f1"]) == set(FIRE_LEVELS)
    assert set(result["val"]["r"]) == set(SpeechTrainer(cfg, data, tmp_path / "run").dit.motion_channels)
    assert json.loads((tmp_path / "run" / "eval.json").read_text())["step"] == 40
    rows = [json.loads(r) for r in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert read_metadata(tmp_path / "run" / "speech.safetensors")["kind"] == "speech_motion"
    # A rerun with more steps resumes.
    result = SpeechTrainer(dataclasses.replace(cfg, steps=45), data, tmp_path / "run").run()
    assert result["step"] == 45
    from lpm.errors import LpmError
    from lpm.models import DiT, preset

    path = tmp_path / "run" / "speech.safetensors"
    with pytest.raises(LpmError, match="speech_dim"):  # trained for the tiny preset, not this shape
        load_speech_into(make_model(micro(speech_dim=8)).speech_motion, path, micro(speech_dim=8))
    dit = DiT(preset("tiny"))
    load_speech_into(dit.speech_motion, path, dit.cfg)


def test_base_training_with_the_track_from_a_checkpoint_without_one(tmp_path):
    from lpm.training.base_trainer import BaseTrainer, load_base_config

    data, vae = make_dataset(tmp_path / "data"), make_vae(tmp_path / "vae.safetensors")
    old = load_base_config("tiny", None, [*MICRO, "steps=0", "model.motion_channels=[]"])
    trainer = BaseTrainer(old, data, str(vae), tmp_path / "old")
    trainer.run()
    assert not trainer.dit_cfg.motion_channels
    keys = [*MICRO, "steps=2", f"init={tmp_path / 'old' / 'dit.safetensors'}", "flow.loss_space=x0",
            "mouth_weight=5", "audio_check_every=1", "predicted_motion=0.5", "model.reference_concat=true"]
    new = BaseTrainer(load_base_config("tiny", None, keys), data, str(vae), tmp_path / "new")
    new.run()
    rows = [json.loads(r) for r in (tmp_path / "new" / "log.jsonl").read_text().splitlines()]
    assert {"gap_own_audio", "gap_partner_audio", "gap_track"} <= set(rows[-1])
    assert new.dit_cfg.motion_channels and not any(p.requires_grad for p in new.model.dit.speech_motion.parameters())
    assert new.dit_cfg.reference_concat and new.model.dit.reference_in.weight.requires_grad


def test_export_replaces_the_speech_network(tmp_path):
    from lpm.errors import LpmError
    from lpm.models import DiT, load_dit, preset, save_dit
    from lpm.models.export import export_dit
    from lpm.models.motion_track import save_speech

    cfg = preset("tiny", num_blocks=1, dim=32, num_heads=2, ffn_dim=32, text_dim=16, text_layers=1, text_heads=2)
    torch.manual_seed(0)
    dit_path = save_dit(tmp_path / "dit.safetensors", DiT(cfg))
    other = DiT(cfg).speech_motion
    with torch.no_grad():
        for p in other.parameters():
            p.add_(1.0)
    speech = save_speech(tmp_path / "speech.safetensors", other, cfg, {"val_r": {"jaw_open": 0.9}})
    out = export_dit(dit_path, tmp_path / "out.safetensors", dtype="fp32", speech=speech)
    loaded = load_dit(out.path)
    for name, p in other.state_dict().items():
        assert torch.equal(loaded.speech_motion.state_dict()[name], p)
    source = load_dit(dit_path)
    rest = [k for k in source.state_dict() if not k.startswith("speech_motion.")]
    assert all(torch.equal(loaded.state_dict()[k], source.state_dict()[k]) for k in rest)
    wrong = save_speech(tmp_path / "wrong.safetensors", other, dataclasses.replace(cfg, speech_dim=64), {})
    with pytest.raises(LpmError, match="speech_dim"):
        export_dit(dit_path, tmp_path / "bad.safetensors", speech=wrong)
    # A DiT saved before reactions existed takes a speech network with them: the settings come along.
    old_cfg = dataclasses.replace(cfg, reaction_kinds=())
    old_path = save_dit(tmp_path / "old.safetensors", DiT(old_cfg))
    assert not hasattr(load_dit(old_path).speech_motion, "templates")
    with torch.no_grad():
        other.templates.normal_()
        other.fire_level.fill_(0.3)
    speech = save_speech(tmp_path / "speech2.safetensors", other, cfg, {})
    new = load_dit(export_dit(old_path, tmp_path / "new.safetensors", dtype="fp32", speech=speech).path)
    assert new.cfg.reaction_kinds == cfg.reaction_kinds
    assert new.cfg.speech_history_frames > old_cfg.speech_history_frames
    assert torch.equal(new.speech_motion.templates, other.templates)
    assert float(new.speech_motion.fire_level) == pytest.approx(0.3)

