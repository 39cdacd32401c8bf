#!/usr/bin/env bash
# Train the shipped VAE on a GPU machine (no espeak-ng / PyAV needed there): render a random-pose frame set,
# measure the step time, then train two VAE widths side by side for a fixed time budget and copy the results
# to $OUT. Used once on an H200 (see checkpoints/README.md); runs on CPU too with DEVICE=cpu and small numbers.
set -u -o pipefail
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
OUT=${OUT:-out/gpu_vae}; DEVICE=${DEVICE:-cuda}; IDS=${IDS:-2400}; PER=${PER:-16}; BUDGET_S=${BUDGET_S:-300}
BATCH=${BATCH:-64}; WORKERS=${WORKERS:-16}; WORK=${WORK:-/tmp/lpm_gpu_vae}
mkdir -p "$OUT/a" "$OUT/b" "$WORK"
lpm() { python3 -m lpm.cli "$@"; }
{ nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "no GPU"; } | tee "$OUT/run.log"
t0=$(date +%s)
lpm world frames --out "$WORK/fs" --identities "$IDS" --val-identities 64 --zeroshot-identities 32 \
  --per-identity "$PER" --workers "$WORKERS" 2>&1 | grep -v '%|' | tee -a "$OUT/run.log"
echo "frames: $(( $(date +%s) - t0 )) s" | tee -a "$OUT/run.log"
COMMON="device=$DEVICE log_every=20 sample_every=100000 checkpoint_every=500 eval_frames_per_clip=0"
if [ -z "${STEPS:-}" ]; then
  lpm train vae --data "$WORK/fs" --out "$WORK/probe" --steps 60 --batch "$BATCH" $COMMON > "$WORK/probe.log" 2>&1
  SPS=$(python3 -c "import json;r=[json.loads(l) for l in open('$WORK/probe/log.jsonl')];print(r[-1]['s_per_step'])")
  # Two runs share the machine: assume each goes at half the probe's speed.
  STEPS=$(python3 -c "print(max(100, int($BUDGET_S / ($SPS * 2.0))))")
  echo "probe: $SPS s/step alone -> $STEPS steps per run" | tee -a "$OUT/run.log"
fi
A_CH=${A_CH:-[32,64,128]}; B_CH=${B_CH:-[48,96,192]}
echo "steps $STEPS, widths a=$A_CH b=$B_CH" | tee -a "$OUT/run.log"
timeout $((BUDGET_S + 120)) python3 -m lpm.cli train vae --data "$WORK/fs" --out "$WORK/a" --steps "$STEPS" \
  --batch "$BATCH" $COMMON "model.channels=$A_CH" > "$WORK/a.log" 2>&1 &
timeout $((BUDGET_S + 120)) python3 -m lpm.cli train vae --data "$WORK/fs" --out "$WORK/b" --steps "$STEPS" \
  --batch "$BATCH" $COMMON "model.channels=$B_CH" > "$WORK/b.log" 2>&1 &
wait
for r in a b; do
  tail -c 1500 "$WORK/$r.log" | tr '\r' '\n' | tail -n 30 >> "$OUT/run.log"
  cp "$WORK/$r/vae.safetensors" "$WORK/$r/eval.json" "$WORK/$r/loss.png" "$OUT/$r/" 2>/dev/null
done
cp "$(ls "$WORK"/a/samples/*.png | tail -n 1)" "$OUT/a/sample.png" 2>/dev/null
echo "total: $(( $(date +%s) - t0 )) s" | tee -a "$OUT/run.log"
