#!/usr/bin/env bash
# The tiny models, end to end, on CPU: data -> speech network -> Base -> ODE init -> Online on data -> the Base of
# the Online model's shape -> DMD of the one-step Online model against it (then again, mouth-weighted) -> the
# restorer -> DMD with a latent critic -> DMD with the blended expression canvas -> the weight interpolation of the
# last two -> export. The shipped checkpoints are this chain with its Base stages fine-tuned on a lent H100
# (scripts/gpu_tiny.sh; checkpoints/README.md). Every stage is resumable: rerun this script after a stop and each
# stage continues from its last checkpoint (a finished stage returns at once). Each invocation of a stage appends
# its wall time to $RUNS/recipe_times.tsv, summed per stage into $RUNS/recipe_times.md at the end (a stage resumed
# across sessions adds up). Figures and wall times of the shipped run: checkpoints/README.md.
#
#   bash scripts/train_tiny.sh                 # all stages; writes the checkpoints into $CKPT (checkpoints/)
#   BASE_STEPS=3000 bash scripts/train_tiny.sh # longer Base (a rerun with a larger value continues it)
#   BASE_INIT=checkpoints/base_tiny.safetensors bash scripts/train_tiny.sh   # fine-tune a Base instead of scratch
#
# The Base learns to render the motion track (lpm.models.motion_track) from the truth, and gets it from the speech
# network (trained first, on world truth, then frozen) for PREDICTED_MOTION of its samples and at inference.
set -euo pipefail
cd "$(dirname "$0")/.."
LPM=${LPM:-.venv/bin/lpm}
DATA=${DATA:-data/world128}
RUNS=${RUNS:-runs}
VAE=${VAE:-checkpoints/vae_tiny.safetensors}
CKPT=${CKPT:-checkpoints}  # where the shipped files go (base_tiny, speech_tiny, restorer_tiny, online_tiny)
THREADS=${THREADS:-0}  # torch CPU threads (0 = torch's default)
EXTRA=${EXTRA:-}       # key=value overrides for every training stage, e.g. EXTRA="device=cuda"
BASE_STEPS=${BASE_STEPS:-900}
ODE_STEPS=${ODE_STEPS:-300}
ODE_PAIRS=${ODE_PAIRS:-160}
SPEECH_STEPS=${SPEECH_STEPS:-4000}
SPEECH_WORLD_CLIPS=${SPEECH_WORLD_CLIPS:-2000}  # extra world clips made in memory for the speech network
CONCAT_STEPS=${CONCAT_STEPS:-1000}
RESID_STEPS=${RESID_STEPS:-1000}
BASE_SAME_STEPS=${BASE_SAME_STEPS:-900}
DMD_STEPS=${DMD_STEPS:-1200}  # iterations; the generator is updated every 2nd
DMD_MOUTH_STEPS=${DMD_MOUTH_STEPS:-800}  # the second, mouth-weighted DMD run
RESTORER_STEPS=${RESTORER_STEPS:-8000}
DMD_CRITIC_STEPS=${DMD_CRITIC_STEPS:-800}  # DMD with the latent critic (arm 36)
DMD_BLEND_STEPS=${DMD_BLEND_STEPS:-800}    # DMD with the blended expression canvas (arm 41)
SOUP_ALPHA=${SOUP_ALPHA:-0.7}              # share of arm 41 in the shipped interpolation (arm 42)
TRACK_GAIN=${TRACK_GAIN:-smile=3,brow_raise=4,head_*=3}
BROW_EXEMPLAR=${BROW_EXEMPLAR:-0.5,0.84}    # the gained brow raise drawn from the surprised exemplar ('' = not)
SYNTH_CLIPS=${SYNTH_CLIPS:-320}
SYNTH_SECONDS=${SYNTH_SECONDS:-4}
BASE_INIT=${BASE_INIT:-}      # "" = the Base from random weights
MOUTH_WEIGHT=${MOUTH_WEIGHT:-20}
PREDICTED_MOTION=${PREDICTED_MOTION:-0.25}
# The channels the Online stages' predicted-track samples take from the speech network (the voice and the caption
# set them); head pose and blinks stay true, so the DiT follows them (idle motion sets them at inference).
PREDICTED_CHANNELS=${PREDICTED_CHANNELS:-[jaw_open,mouth_round,mouth_wide,brow_raise,smile,emo_happy,emo_sad,emo_surprised,emo_angry]}

mkdir -p "$RUNS" "$CKPT"
TIMES="$RUNS/recipe_times.tsv"
stage() {  # stage NAME COMMAND...: run it, append NAME, seconds, finish time (UTC) to $TIMES
  local name=$1 t0
  shift
  t0=$(date +%s)
  "$@"
  printf '%s\t%s\t%s\n' "$name" "$(( $(date +%s) - t0 ))" "$(date -u +%FT%TZ)" >> "$TIMES"
}

dmd() {  # dmd NAME STUDENT OUT KEY=VALUE...: a DMD stage against the shipped Base, with the settings every run shares
  local name=$1 student=$2 out=$3
  shift 3
  stage "$name" "$LPM" distill dmd --teacher "$CKPT/base_tiny.safetensors" --student "$student" --data "$DATA" \
    --vae "$VAE" --out "$out" student_steps=1 batch=2 generator_every=2 lr=5e-5 fake_lr=2e-4 \
    predicted_channels="$PREDICTED_CHANNELS" cache_dir="$RUNS/cache" checkpoint_minutes=4 threads="$THREADS" "$@" $EXTRA
}

if [ ! -f "$DATA/manifest.jsonl" ]; then
  stage data "$LPM" world synth --out "$DATA" --clips "$SYNTH_CLIPS" --seconds "$SYNTH_SECONDS" --res 128 --seed 0
fi
stage speech "$LPM" train speech --data "$DATA" --out "$RUNS/speech_tiny" --steps "$SPEECH_STEPS" world_clips="$SPEECH_WORLD_CLIPS" \
  threads="$THREADS"
stage base "$LPM" train base --data "$DATA" --vae "$VAE" --preset tiny --out "$RUNS/base_tiny" --steps "$BASE_STEPS" \
  speech="$RUNS/speech_tiny/speech.safetensors" ${BASE_INIT:+init="$BASE_INIT"} flow.loss_space=x0 \
  mouth_weight="$MOUTH_WEIGHT" predicted_motion="$PREDICTED_MOTION" cache_dir="$RUNS/cache" \
  lr=6e-4 warmup_steps=100 ema_decay=0.995 sample_every=800 audio_check_every=150 checkpoint_minutes=4 \
  threads="$THREADS" $EXTRA
stage ode "$LPM" distill ode --teacher "$RUNS/base_tiny" --out "$RUNS/ode_tiny" --steps "$ODE_STEPS" \
  pairs="$ODE_PAIRS" pair_batch=4 teacher_steps_per_step=2 batch=4 lr=2e-4 checkpoint_minutes=4 \
  sample_every=0 threads="$THREADS" $EXTRA
# The Online model: the ODE student trained on the data itself at its two times (target=data: the teacher has no
# reference path and regressing onto its outputs teaches its smear), with the global reference added token by token
# (reference_concat) and its output the reference plus a residual (reference_residual: it starts as the still
# reference and learns what moves). Two runs: the reference path first, then the residual (docs/learning.md).
stage online_concat "$LPM" distill ode --teacher "$RUNS/ode_tiny" --data "$DATA" --vae "$VAE" --out "$RUNS/online_concat" \
  --steps "$CONCAT_STEPS" --batch 4 target=data reference_concat=true lr=3e-4 warmup_steps=20 \
  mouth_weight="$MOUTH_WEIGHT" predicted_channels="$PREDICTED_CHANNELS" cache_dir="$RUNS/cache" \
  checkpoint_minutes=4 sample_every=0 threads="$THREADS" $EXTRA
stage online_resid "$LPM" distill ode --teacher "$RUNS/online_concat" --data "$DATA" --vae "$VAE" --out "$RUNS/online_resid" \
  --steps "$RESID_STEPS" --batch 4 target=data reference_concat=true reference_residual=true reference_warp=true \
  lr=3e-4 warmup_steps=20 mouth_weight="$MOUTH_WEIGHT" predicted_channels="$PREDICTED_CHANNELS" \
  cache_dir="$RUNS/cache" checkpoint_minutes=4 sample_every=0 threads="$THREADS" $EXTRA
# The shipped Base: the Online model's weights trained bidirectionally at every flow time, so the teacher has the
# student's shape (reference path, track) for DMD (docs/learning.md, arm 22).
stage base_same "$LPM" train base --data "$DATA" --vae "$VAE" --preset tiny --out "$RUNS/base_same" --steps "$BASE_SAME_STEPS" \
  model.reference_concat=true model.reference_residual=true model.reference_warp=true \
  init="$RUNS/online_resid/dit_ema.safetensors" flow.loss_space=x0 mouth_weight="$MOUTH_WEIGHT" \
  predicted_channels="$PREDICTED_CHANNELS" lr=2e-4 warmup_steps=50 ema_decay=0.995 audio_check_every=0 \
  sample_every=0 cache_dir="$RUNS/cache" checkpoint_minutes=4 threads="$THREADS" $EXTRA
# The speech network goes into both exports (the DiTs trained with an earlier copy of it, frozen).
"$LPM" export --run "$RUNS/base_same" --out "$CKPT/base_tiny.safetensors" --speech "$RUNS/speech_tiny/speech.safetensors"
"$LPM" export --run "$RUNS/online_resid" --out "$RUNS/online_1step.safetensors" --online-steps 1 \
  --speech "$RUNS/speech_tiny/speech.safetensors"
cp "$RUNS/speech_tiny/speech.safetensors" "$CKPT/speech_tiny.safetensors"
# The shipped Online model: the one-step student trained by DMD on its own KV-cache rollouts against the Base above,
# with the rollout also regressed onto its data window (regression=0.5: pure DMD lost the identity and the shut
# mouth; docs/learning.md, arms 24-25).
dmd dmd "$RUNS/online_1step.safetensors" "$RUNS/online_dmd" regression=0.5 steps="$DMD_STEPS"
"$LPM" export --run "$RUNS/online_dmd" --out "$RUNS/online_dmd.safetensors"
# A second anchored DMD run from that model with the mouth weighted 20x in the regression (mouth_weight): the first
# one lost the shut mouth of silence (0.939 -> 0.889); this one brings it back to 0.922 (docs/learning.md, arm 26).
dmd dmd_mouth "$RUNS/online_dmd.safetensors" "$RUNS/online_dmd_mouth" regression=0.5 mouth_weight="$MOUTH_WEIGHT" \
  steps="$DMD_MOUTH_STEPS"
# The streamed model's track gain (docs/learning.md, "Track gain"): the DiT under-draws the brows, the smile and the
# head pose its track carries; the gains were chosen on training clips with scripts/track_gain.py. (The stop-29
# model.)
"$LPM" export --run "$RUNS/online_dmd_mouth" --out "$RUNS/online_mouth.safetensors" --track-gain "$TRACK_GAIN"
# The restorer (docs/learning.md, "The restorer"): a small U-Net after the decoder that takes detail from the global
# reference, trained on true frames against their VAE round trips, half from blurred latents.
stage restorer "$LPM" train restorer --data "$DATA" --vae "$VAE" --out "$RUNS/restorer2" steps="$RESTORER_STEPS" \
  "soften_sigma=[0.15,0.6]" soften_noise=0.1 "model.channels=[24,48,96]" threads="$THREADS" $EXTRA
cp "$RUNS/restorer2/restorer.safetensors" "$CKPT/restorer_tiny.safetensors"
# DMD with a critic on latent frames (gan_weight) and the data anchor halved (arm 36), exported with the restorer
# (arm 37, the stop-34 model).
dmd dmd_critic "$RUNS/online_mouth.safetensors" "$RUNS/online_dmd_critic" regression=0.25 \
  mouth_weight="$MOUTH_WEIGHT" gan_weight=0.3 gan_lr=1e-3 gan_noise=0.1 steps="$DMD_CRITIC_STEPS"
"$LPM" export --run "$RUNS/online_dmd_critic" --out "$RUNS/online_critic.safetensors" --track-gain "$TRACK_GAIN" \
  --restorer "$CKPT/restorer_tiny.safetensors"
# DMD with the blended expression canvas (arm 41): each frame drawn on the global reference moved toward the
# caption's emotion exemplar by its strength; the brows and cheeks weighted in the anchor (expression_weight).
dmd dmd_blend "$RUNS/online_critic.safetensors" "$RUNS/online_dmd_blend" regression=0.5 mouth_weight="$MOUTH_WEIGHT" \
  expression_weight=20 gan_weight=0.3 gan_lr=1e-3 gan_noise=0.1 steps="$DMD_BLEND_STEPS" expression_canvas=true \
  expression_blend=true
"$LPM" export --run "$RUNS/online_dmd_blend" --out "$RUNS/online_blend.safetensors" --track-gain "$TRACK_GAIN" \
  --restorer "$CKPT/restorer_tiny.safetensors"
# The shipped Online model (arm 42): the weights interpolated between the model DMD started from and its
# continuation (WiSE-FT), which keeps most of the seen styles' gain and gives back most of the zero-shot loss.
PYTHONPATH=scripts "${PYTHON:-.venv/bin/python}" scripts/weight_soup.py "$RUNS/online_critic.safetensors" \
  "$RUNS/online_blend.safetensors" --alpha "$SOUP_ALPHA" --out "$RUNS/online_soup.safetensors"
# Its gained track clipped to the range the DiT saw in training (docs/learning.md, "Track range"): a nod x3 went to
# -25 degrees of pitch and smeared the face. Its brow raise drawn from the surprised exemplar on the canvas
# (docs/learning.md, "Brow exemplar"): the DiT draws the brow of its track at r 0.03.
"$LPM" export --run "$RUNS/online_soup.safetensors" --out "$CKPT/online_tiny.safetensors" \
  --restorer "$CKPT/restorer_tiny.safetensors" --track-range "$DATA" --brow-exemplar "$BROW_EXEMPLAR"
# The wall time of each stage, summed over this script's invocations.
awk -F'\t' '{ s[$1] += $2; if (!($1 in o)) { o[$1] = ++n; k[n] = $1 } } END {
  print "| stage | wall time (min) |"; print "| --- | --- |";
  for (i = 1; i <= n; i++) { printf "| %s | %.1f |\n", k[i], s[k[i]] / 60; t += s[k[i]] }
  printf "| **all** | **%.1f** (%.2f h) |\n", t / 60, t / 3600 }' "$TIMES" > "$RUNS/recipe_times.md"
cat "$RUNS/recipe_times.md"
