#!/usr/bin/env bash
# Sets up everything and runs the main job. Until the starter pack lands (issues 5 and 9)
# it shows the machinery: a checkpoint's contents, the parity checks against the reference
# implementations, and a render through the full pipeline with a random-weight model in the
# real diffusers layout (so the picture is noise, by construction).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
FIXTURES=${IRIS_FIXTURES:-../shared/fixtures}
IRIS=build/app/iris
OUT=${IRIS_DEMO_OUT:-out/demo}
mkdir -p "$OUT"
$IRIS --version
$IRIS info "$FIXTURES/unet_sd15like_ldm.safetensors"
$IRIS parity "$FIXTURES"/*.safetensors "$FIXTURES"/*.jsonl 2>/dev/null | grep -vE 'inter\.' || true
[ -d "$OUT/random-sd" ] || $IRIS random-model "$OUT/random-sd" --tokenizer "$FIXTURES/data/clip_tokenizer"
$IRIS render --model "$OUT/random-sd" --prompt "a small red circle at the top left" --steps 8 --size 64x64 \
  --seed 42 -o "$OUT/render.png"
