"""PNG plot of the Base trainer's curves from ``RUN/log.jsonl``: loss (raw and smoothed) and gradient norm; the
audio-use checks (``lpm.training.diagnostics``) when logged; for a DMD run (rows with ``dmd_loss``) also the
generator's DMD loss and the score gap on its update steps (its regression onto the data, when anchored; the
critic's and the generator's GAN losses, with a critic); for an ODE run with ``own_rollout`` the smoothed loss of
its rollout steps and of its teacher-forced steps apart."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

SMOOTH_STEPS = 50  # moving-average window of the smoothed loss curve
GAP_LABELS = {  # lpm.training.diagnostics checks
    "gap_own_audio": "mouth, own voices swapped (track from audio)",
    "gap_track": "mouth, true tracks swapped",
    "gap_partner_audio": "whole frame, partner voices swapped",
}


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over up to ``window`` values (shorter at the start)."""
    csum = np.concatenate([[0.0], np.cumsum(values)])
    idx = np.arange(1, len(values) + 1)
    lo = np.maximum(0, idx - window)
    return (csum[idx] - csum[lo]) / (idx - lo)


def plot_base_losses(log_path: Path, out_path: Path) -> None:
    """Loss and gradient norm against step; nothing is written for an empty log."""
    if not log_path.is_file():
        return
    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    if not rows:
        return
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on training machines
    import matplotlib.pyplot as plt

    steps = np.array([r["step"] for r in rows])
    loss = np.array([r["loss"] for r in rows])
    gen = [r for r in rows if "dmd_loss" in r]
    gaps = [r for r in rows if any(k in r for k in GAP_LABELS)]
    panels = 2 + bool(gen) + bool(gaps)
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4))
    ax1, ax2 = axes[0], axes[1]
    ax1.plot(steps, loss, alpha=0.3, label="loss")
    ax1.plot(steps, moving_average(loss, SMOOTH_STEPS), label=f"mean of {SMOOTH_STEPS}")
    own = np.array([bool(r.get("own_rollout", 0.0)) for r in rows])
    if own.any() and not own.all():  # lpm distill ode own_rollout=: the two inputs' losses apart
        for mask, label in ((own, "own rollout"), (~own, "data noised (teacher-forced)")):
            ax1.plot(steps[mask], moving_average(loss[mask], SMOOTH_STEPS), label=f"{label}, mean of {SMOOTH_STEPS}")
    ax1.set_yscale("log")
    ax1.set_xlabel("step")
    ax1.set_ylabel("weighted MSE (the objective's space)")
    ax1.legend()
    ax2.plot(steps, [r["grad_norm"] for r in rows], color="C3")
    ax2.set_yscale("log")
    ax2.set_xlabel("step")
    ax2.set_ylabel("gradient norm (before clipping)")
    checks = [r for r in rows if "audio_gain" in r]
    if checks:  # does the model use its own voice? (BaseTrainer.audio_gain)
        ax4 = ax1.twinx()
        ax4.plot([r["step"] for r in checks], [100 * r["audio_gain"] for r in checks], "o-", color="C2", ms=3,
                 label="audio gain")
        ax4.axhline(0, color="C2", lw=0.5)
        ax4.set_ylabel("loss rise with shuffled own voice (%)", color="C2")
    if gaps:  # does the model use its audio and its motion track, where only they can tell (t >= 0.7)?
        ax5 = axes[-1]
        for key, label in GAP_LABELS.items():
            pts = [(r["step"], 100 * r[key]) for r in gaps if key in r]
            if pts:
                ax5.plot(*zip(*pts), "o-", ms=3, label=label)
        ax5.axhline(0, color="k", lw=0.5)
        ax5.set_xlabel("step")
        ax5.set_ylabel("x0 error rise at t = 0.7-0.95 (%)")
        ax5.legend(fontsize=8)
    if gen:  # DMD: the logged loss is the fake score's; the generator's figures on its own steps
        ax1.set_ylabel("fake score: weighted velocity MSE")
        ax3 = axes[2]
        ax3.plot([r["step"] for r in gen], [r["dmd_loss"] for r in gen], color="C2", label="DMD loss")
        ax3.plot([r["step"] for r in gen], [r["score_gap"] for r in gen], color="C4", label="mean |score gap|")
        anchored = [r for r in gen if "regression" in r]
        if anchored:  # ``regression > 0``: the rollout's face-weighted error against its data window
            regression = moving_average(np.array([r["regression"] for r in anchored]), 50)
            ax3.plot([r["step"] for r in anchored], regression, color="C1", label="regression onto data (mean of 50)")
        checked = [r for r in gen if "expert" in r]
        if checked:  # ``expert_weight > 0``: the motion expert's error on the rollout, and on the data (its floor)
            steps = [r["step"] for r in checked]
            ax3.plot(steps, moving_average(np.array([r["expert"] for r in checked]), 50), color="C5",
                     label="motion expert on the rollout (mean of 50)")
            ax3.plot(steps, moving_average(np.array([r["expert_floor"] for r in checked]), 50), color="C5", ls=":",
                     label="motion expert on the data (floor)")
        critic = [r for r in rows if "critic_loss" in r]
        if critic:  # ``gan_weight > 0``: the critic's loss every iteration, the generator's GAN loss on its steps
            ax3.plot([r["step"] for r in critic], moving_average(np.array([r["critic_loss"] for r in critic]), 50),
                     color="C6", label="critic loss (mean of 50; 1.39 = cannot tell)")
            adversarial = [r for r in gen if "gan_generator" in r]
            ax3.plot([r["step"] for r in adversarial],
                     moving_average(np.array([r["gan_generator"] for r in adversarial]), 50),
                     color="C7", label="generator GAN loss (mean of 50)")
        ax3.set_xlabel("step")
        ax3.set_yscale("log")
        ax3.legend(fontsize=7, framealpha=0.6)
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
