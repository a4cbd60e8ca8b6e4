#!/usr/bin/env bash
# Sets up everything and runs the main job: a checkpoint's contents, the parity checks against
# the reference implementations, a render (with the starter pack when assets/ has it) and a
# streamed VLM answer about it.
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
# The starter pack when it is there (scripts/train_starter_pack.sh), else a random-weight model
# in the same layout (noise, by construction).
if [ -f assets/starter/model_index.json ]; then
  MODEL=assets/starter
  # The showcase: text-to-image, image prompt, style and skeleton results in one labelled grid.
  $IRIS showcase --model "$MODEL" -o "$OUT/showcase.png"
else
  MODEL="$OUT/random-sd"
  [ -d "$MODEL" ] || $IRIS random-model "$MODEL" --tokenizer "$FIXTURES/data/clip_tokenizer"
fi
$IRIS render --model "$MODEL" --prompt "a large red circle at the top left" --steps 20 --size 64x64 \
  --seed 42 -o "$OUT/render.png"
# The pack's VLM answers about that picture, streamed, with ViSpec speculative decoding (its
# stats and the speedup over plain decoding in the same process); a random-weight LLaVA when
# the pack has no VLM.
if [ -f assets/starter/vlm/config.json ]; then
  DRAFT=()
  [ -f assets/starter/vlm-draft/config.json ] && DRAFT=(--draft assets/starter/vlm-draft --draft-chain 4 --compare)
  $IRIS ask --model assets/starter/vlm --image "$OUT/render.png" "Describe the image." --max-tokens 96 "${DRAFT[@]}"
  $IRIS ask --model assets/starter/vlm --image "$OUT/render.png" "What color is the circle?" --max-tokens 8
else
  [ -d "$OUT/random-llava" ] || $IRIS random-llava "$OUT/random-llava"
  $IRIS ask --model "$OUT/random-llava" --image "$OUT/render.png" "What is in the image?" --max-tokens 16
fi
echo "outputs in $OUT/ (showcase.png, render.png)"
