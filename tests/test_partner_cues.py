"""The partner cues (``lpm.training.partner_cues``): targets from a clip's script, the auxiliary head's loss, and
``lpm train speech cue_weight=`` on a micro world (logged, evaluated, resumed only with the same setting)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from base_fixtures import FRAMES, make_dataset
from lpm.config import ConfigError
from lpm.training.partner_cues import CUE_HOLD_FRAMES, CUE_KINDS, CueHead, cue_targets, partner_cue_frames

SR, FPS = 16000, 24


def seg(speaker: str, kind: str, start_s: float, end_s: float, question: bool = False) -> dict:
    return {"speaker": speaker, "kind": kind, "text": "", "start": int(start_s * SR), "end": int(end_s * SR),
            "question": question, "interrupted": False}


def test_cues_are_the_partners_phrase_ends_questions_and_laugh_starts():
    script = [seg("partner", "speech", 0.0, 1.0), seg("self", "speech", 1.2, 2.0),
              seg("partner", "speech", 2.0, 2.5, question=True), seg("partner", "laugh", 3.0, 3.4),
              seg("self", "laugh", 0.5, 0.7), seg("partner", "backchannel", 1.5, 1.6)]
    cues = partner_cue_frames(script, FPS, SR)
    assert cues == [("phrase_end", 24), ("question", 60), ("laugh", 72)]
    t = cue_targets(cues, num_frames=76)
    assert t.shape == (76, len(CUE_KINDS))
    for kind, frame in cues:  # held for CUE_HOLD_FRAMES frames from the cue, cut at the clip's end
        col = t[:, CUE_KINDS.index(kind)]
        assert col[frame:frame + CUE_HOLD_FRAMES].eq(1).all() and col[frame - 1] == 0
        assert col.sum() == min(CUE_HOLD_FRAMES, 76 - frame)
    assert t.sum(1).max() == 1  # these cues do not overlap
    with pytest.raises(ValueError, match="unknown partner cue 'sigh'"):
        cue_targets([("sigh", 3)], 10)


def test_cue_loss_reads_only_windows_with_a_script():
    torch.manual_seed(0)
    head = CueHead(8)
    h, targets = torch.randn(4, 5, 8, requires_grad=True), torch.rand(4, 5, len(CUE_KINDS)).round()
    has = torch.tensor([True, False, True, False])
    assert torch.allclose(head.loss(h, targets, has), head.loss(h[has], targets[has], torch.ones(2, dtype=bool)))
    noise = targets.clone()
    noise[~has] = 1 - noise[~has]  # what a window without a script holds does not matter
    assert torch.equal(head.loss(h, targets, has), head.loss(h, noise, has))
    none = head.loss(h, targets, torch.zeros(4, dtype=bool))
    assert none.item() == 0 and none.requires_grad


def test_train_speech_with_cues_logs_evaluates_and_resumes_only_alike(tmp_path, monkeypatch):
    from lpm.training import speech_trainer
    from lpm.training.speech_trainer import SpeechTrainConfig, SpeechTrainer

    monkeypatch.setattr(speech_trainer, "AFTER_CUE_FRAMES", 4)  # the micro clips are 12 frames long
    data = make_dataset(tmp_path / "data")
    end_s = FRAMES / FPS
    for i, meta_path in enumerate(sorted((tmp_path / "data").glob("c*/meta.json"))):
        meta = json.loads(meta_path.read_text())  # a partner question in clip 0, a statement in the others
        meta["segments"] = [seg("partner", "speech", 0.0, end_s / 3, question=i == 0)]
        meta_path.write_text(json.dumps(meta))
    cfg = SpeechTrainConfig(steps=30, batch=4, frames=8, lr=3e-3, warmup_steps=0, eval_every=30, threads=1,
                            cue_weight=5.0)
    result = SpeechTrainer(cfg, data, tmp_path / "run").run()
    rows = [json.loads(r) for r in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert all("cue_loss" in r for r in rows) and rows[-1]["cue_loss"] < rows[0]["cue_loss"]
    after = result["reactions_after_cues"]
    assert set(after) == set(CUE_KINDS) and after["laugh"]["cues"] == 0
    assert after["phrase_end"]["cues"] == 1 and after["question"]["cues"] == 1  # the two train clips' cues
    assert set(after["question"]) == {"cues", "nod", "brow_raise", "head_tilt", "smile"}
    with pytest.raises(ConfigError, match="cue_weight"):
        SpeechTrainer(dataclasses.replace(cfg, steps=35, cue_weight=0.0), data, tmp_path / "run").run()
    assert SpeechTrainer(dataclasses.replace(cfg, steps=35), data, tmp_path / "run").run()["step"] == 35
    with pytest.raises(ConfigError, match="cue_weight"):
        SpeechTrainConfig(cue_weight=-1)
