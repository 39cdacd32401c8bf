#!/usr/bin/env bash
# docs/demo_frames.png: `lpm demo`'s frames at 2, 5 and 8 s (24 fps) stacked, the model beside the rig.
#   bash scripts/demo_frames.sh [CHECKPOINT] [OUT_PNG]
set -euo pipefail
cd "$(dirname "$0")/.."
CKPT=${1:-checkpoints/online_tiny.safetensors}
PNG=${2:-docs/demo_frames.png}
LPM=${LPM:-.venv/bin/lpm}
VIDEO=$(mktemp -d)/demo.mp4
"$LPM" demo --out "$VIDEO" --checkpoint "$CKPT"
ffmpeg -loglevel error -y -i "$VIDEO" -vf "select='eq(n\,48)+eq(n\,120)+eq(n\,192)',tile=1x3" -frames:v 1 \
  -fps_mode passthrough "$PNG"
echo "wrote $PNG from $VIDEO"
