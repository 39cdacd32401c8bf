#!/usr/bin/env bash
# One lent-GPU session's work on the tiny models, in a fixed time budget, as one device call:
#   1. rebuild the Base latent cache from a pack (scripts/gpu_pack.py; the cache itself is too big to carry);
#   2. fine-tune the shipped Base (init=checkpoints/base_tiny.safetensors) for BASE_S seconds at batch BATCH,
#      the step count set from a short timed probe so the cosine schedule ends on time;
#   3. ODE-distill an Online student from it for ODE_S seconds;
#   4. export both (bf16), split into <16 MiB parts for the trip back ($OUT allows 16 MiB per file);
#   5. `lpm bench --suite speed` for every preset on the GPU, each preset under its own time limit.
# Every stage checkpoints each minute, so a stage cut off by its timeout still leaves weights to export.
# Here, first: python scripts/gpu_pack.py pack ... --out .gpu/pack (and carry .gpu). CPU dry run:
#   DEVICE=cpu BASE_S=60 ODE_S=60 SPEED_PRESETS=tiny OUT=/tmp/gpu_out bash scripts/gpu_tiny.sh
set -u -o pipefail
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
OUT=${OUT:-out/gpu_tiny}; DEVICE=${DEVICE:-cuda}; WORK=${WORK:-/tmp/lpm_gpu_tiny}; PACK=${PACK:-.gpu/pack}
BASE_S=${BASE_S:-240}; ODE_S=${ODE_S:-80}; BATCH=${BATCH:-32}; ODE_BATCH=${ODE_BATCH:-32}
SPEED_PRESETS=${SPEED_PRESETS-tiny small base lpm-17b}  # "" = none; SPEED_S=${SPEED_S:-50}
VAE=checkpoints/vae_tiny.safetensors
mkdir -p "$OUT" "$WORK/logs"
LOG="$WORK/logs/run.log"
lpm() { python3 -m lpm.cli "$@"; }
say() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a "$LOG"; }
T0=$(date +%s)
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no GPU"; } \
  | tee -a "$LOG"
python3 -c "import torch; print('torch', torch.__version__)" | tee -a "$LOG"

python3 scripts/gpu_pack.py unpack --pack "$PACK" --vae "$VAE" --cache "$WORK/cache" --device "$DEVICE" 2>&1 \
  | tee -a "$LOG" || exit 1
say "cache rebuilt"

COMMON="device=$DEVICE cache_dir=$WORK/cache sample_every=0 checkpoint_minutes=1 checkpoint_every=100000"
# (key=value overrides must all come last, after the --options)
BASE="python3 -m lpm.cli train base --data $PACK/data --vae $VAE --preset tiny"
# The shipped Base already carries its motion track and speech network (stop 17): keep its objective.
BASE_KEYS="init=checkpoints/base_tiny.safetensors $COMMON batch=$BATCH lr=3e-4 warmup_steps=100 ema_decay=0.999"
BASE_KEYS="$BASE_KEYS flow.loss_space=x0 mouth_weight=20"
# Probe: 25 steps; the seconds per step of the last 15 set the real run's steps.
$BASE --out "$WORK/probe" --steps 25 $BASE_KEYS > "$WORK/logs/probe.log" 2>&1 || { tail -n 30 "$WORK/logs/probe.log"; exit 1; }
SPS=$(python3 -c "import json;r=[json.loads(l) for l in open('$WORK/probe/log.jsonl')][10:];\
print(sum(x['s_per_step'] for x in r)/len(r))")
STEPS=$(python3 -c "print(max(50, int(($BASE_S - 25) / $SPS)))")
say "base probe: $SPS s/step at batch $BATCH -> $STEPS steps"
# max_minutes: a clean stop (with a checkpoint) should the probe have been optimistic; timeout: the last resort.
timeout $((BASE_S + 60)) $BASE --out "$WORK/base" --steps "$STEPS" $BASE_KEYS max_minutes=$(python3 -c "print($BASE_S / 60)") \
  > "$WORK/logs/base.log" 2>&1
say "base done (exit $?): $(tail -c 400 "$WORK/logs/base.log" | tr '\r' '\n' | grep -v '^$' | tail -n 1)"

ODE="python3 -m lpm.cli distill ode --teacher $WORK/base --out $WORK/ode --steps 100000 $COMMON"
ODE="$ODE pair_batch=${PAIR_BATCH:-64} teacher_steps_per_step=2 batch=$ODE_BATCH lr=2e-4 warmup_steps=50 mouth_weight=20"
# Teacher pairs first (not timed by max_minutes), then ODE_S seconds of regression at a near-constant rate.
PAIRS=${PAIRS:-1536}
timeout $((ODE_S + 120)) $ODE pairs="$PAIRS" max_minutes=$(python3 -c "print($ODE_S / 60)") \
  > "$WORK/logs/ode.log" 2>&1
say "ode done (exit $?): $(tail -c 400 "$WORK/logs/ode.log" | tr '\r' '\n' | grep -v '^$' | tail -n 1)"

for run in base ode; do
  lpm export --run "$WORK/$run" --out "$WORK/${run}_tiny.safetensors" 2>&1 | tail -n 2 | tee -a "$LOG"
  split -b 15M -d "$WORK/${run}_tiny.safetensors" "$OUT/${run}_tiny.part" 2>/dev/null
done
sha256sum "$WORK"/*_tiny.safetensors | tee -a "$LOG"

for p in $SPEED_PRESETS; do
  timeout "$SPEED_S" python3 -m lpm.cli bench --suite speed --preset "$p" --device "$DEVICE" \
    --out "$WORK/logs/speed_$p" > "$WORK/logs/speed_$p.log" 2>&1
  say "speed $p (exit $?)"
done

for run in probe base ode; do
  cp "$WORK/$run/log.jsonl" "$WORK/logs/${run}_log.jsonl" 2>/dev/null
  cp "$WORK/$run/loss.png" "$WORK/logs/${run}_loss.png" 2>/dev/null
done
say "total"
tar -czf "$OUT/logs.tar.gz" -C "$WORK" logs
