#!/usr/bin/env bash
# One lent-GPU session's DMD arm of the Online model, as one device call, in a fixed time budget.
#
# Here, first (the working tree travels only up to 64 MiB, and the checkpoints alone are 95 MB of it):
#   bash scripts/gpu_dmd.sh carry      # .gpu/carry.tar.xz: latent-cache pack + teacher + student + VAE, ~55 MB
#   bash scripts/gpu_dmd.sh slim       # untrack (index only) and ignore all but src/, scripts/ and the build files
# then the device call, carrying .gpu, and afterwards:
#   bash scripts/gpu_dmd.sh unslim     # the index and .git/info/exclude as they were; no file was touched
# On the GPU machine:
#   bash scripts/gpu_dmd.sh
# There:
#   1. unpack the carry and rebuild the latent cache on the GPU (scripts/gpu_pack.py unpack);
#   2. probe: PROBE_STEPS iterations time one iteration, and fail fast (a broken call costs a minute, not ten);
#   3. the DMD run (the shipped student against the shipped Base, arm 33's keys at batch BATCH) for DMD_S
#      seconds in two segments, the step count set from the probe so the cosine schedule ends on time;
#      the EMA weights after each segment come back (fp16, split in <16 MiB parts: $OUT's per-file limit).
# CPU dry run: DEVICE=cpu DMD_S=60 SEG1_S=30 BATCH=2 OUT=/tmp/gpu_out bash scripts/gpu_dmd.sh
set -u -o pipefail
cd "$(dirname "$0")/.."
CARRY=.gpu/carry.tar.xz
if [ "${1:-}" = carry ]; then
  set -e
  PY=${PY:-.venv/bin/python}
  rm -rf .gpu/stage && mkdir -p .gpu/stage/ckpt
  "$PY" scripts/gpu_pack.py pack --data "${DATA:-data/world128}" --cache "${CACHE:-runs/cache}" \
    --vae checkpoints/vae_tiny.safetensors --out .gpu/stage/pack
  cp checkpoints/base_tiny.safetensors checkpoints/online_tiny.safetensors checkpoints/vae_tiny.safetensors \
    .gpu/stage/ckpt/
  tar -C .gpu/stage -cf - pack ckpt | xz -T2 -6 > "$CARRY.tmp" && mv "$CARRY.tmp" "$CARRY"
  rm -rf .gpu/stage
  ls -l "$CARRY"
  exit 0
fi

SLIM="checkpoints docs tests README.md .ci"  # what a device call need not carry
if [ "${1:-}" = slim ]; then
  set -e
  [ -z "$(git diff --cached --name-only)" ] || { echo "staged changes: commit them first" >&2; exit 1; }
  cp .git/info/exclude .gpu/exclude.bak 2>/dev/null || : > .gpu/exclude.bak
  git rm -r -q --cached $SLIM
  for p in $SLIM; do echo "/$p" >> .git/info/exclude; done
  (git ls-files -z; git ls-files -z --others --exclude-standard) | du -cb --files0-from=- | tail -n 1
  du -sb .gpu
  exit 0
fi
if [ "${1:-}" = unslim ]; then
  git reset -q && cp .gpu/exclude.bak .git/info/exclude && git status --short | head
  exit 0
fi

export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
OUT=${OUT:-out/gpu_dmd}; DEVICE=${DEVICE:-cuda}; WORK=${WORK:-/tmp/lpm_gpu_dmd}
DMD_S=${DMD_S:-420}; SEG1_S=${SEG1_S:-210}; BATCH=${BATCH:-16}; PROBE_STEPS=${PROBE_STEPS:-12}
mkdir -p "$OUT" "$WORK/logs"
LOG="$WORK/logs/run.log"
T0=$(date +%s)
say() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a "$LOG"; }
finish() {  # whatever happened: the logs come back
  for run in probe dmd; do
    for f in log.jsonl loss.png config.json; do cp "$WORK/$run/$f" "$WORK/logs/${run}_$f" 2>/dev/null; done
  done
  tar -czf "$OUT/logs.tar.gz" -C "$WORK" logs
}
trap finish EXIT
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no GPU"; } \
  | tee -a "$LOG"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$LOG"

python3 -c "import tarfile; tarfile.open('$CARRY').extractall('$WORK/carry')" || { say "no carry"; exit 1; }
C=$WORK/carry
python3 scripts/gpu_pack.py unpack --pack "$C/pack" --vae "$C/ckpt/vae_tiny.safetensors" --cache "$WORK/cache" \
  --device "$DEVICE" 2>&1 | tee -a "$LOG" || exit 1
say "cache rebuilt"

DMD="python3 -m lpm.cli distill dmd --teacher $C/ckpt/base_tiny.safetensors --student $C/ckpt/online_tiny.safetensors"
DMD="$DMD --data $C/pack/data --vae $C/ckpt/vae_tiny.safetensors"
# (key=value overrides last.) Arm 33's keys (docs/learning.md), the batch 8x theirs.
KEYS="student_steps=1 batch=$BATCH generator_every=2 lr=5e-5 fake_lr=2e-4 regression=0.5 mouth_weight=20"
KEYS="$KEYS predicted_channels=[jaw_open,mouth_round,mouth_wide,brow_raise,smile,emo_happy,emo_sad,emo_surprised,emo_angry]"
KEYS="$KEYS gan_weight=0.3 gan_lr=1e-3 gan_noise=0.1 device=$DEVICE cache_dir=$WORK/cache sample_every=0"
KEYS="$KEYS checkpoint_minutes=1"
$DMD --out "$WORK/probe" $KEYS steps=$PROBE_STEPS > "$WORK/logs/probe.log" 2>&1 \
  || { tail -n 40 "$WORK/logs/probe.log"; exit 1; }
SPS=$(python3 -c "import json;r=[json.loads(l) for l in open('$WORK/probe/log.jsonl')][4:];\
print(sum(x['s_per_step'] for x in r)/len(r))")
STEPS=$(python3 -c "print(max(20, int(($DMD_S - 20) / $SPS)))")
say "probe: $SPS s/iteration at batch $BATCH -> $STEPS iterations"

segment() {  # $1 name, $2 seconds: run (or resume) the DMD run for that long, then bring its EMA weights back
  timeout $(( $2 + 90 )) $DMD --out "$WORK/dmd" $KEYS steps=$STEPS max_minutes=$(python3 -c "print($2 / 60)") \
    > "$WORK/logs/dmd_$1.log" 2>&1
  say "segment $1 (exit $?): $(tail -c 300 "$WORK/logs/dmd_$1.log" | tr '\r' '\n' | grep -v '^$' | tail -n 1)"
  python3 scripts/gpu_pack.py halve "$WORK/dmd/dit_ema.safetensors" --out "$WORK/$1" | tee -a "$LOG"
  split -b 15M -d "$WORK/$1/dit_ema.safetensors" "$OUT/$1_ema.part"
  sha256sum "$WORK/$1/dit_ema.safetensors" | tee -a "$LOG"
  tail -n 1 "$WORK/dmd/log.jsonl" | tee -a "$LOG"
}
segment mid "$SEG1_S"
segment end "$(( DMD_S - SEG1_S ))"
say "total"
