#!/usr/bin/env bash
# Sets up everything and runs the main job. Today: the CLI on a checkpoint and the parity
# checks that exist; it grows into the demo render and a VLM answer with the starter pack.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
FIXTURES=${IRIS_FIXTURES:-../shared/fixtures}
IRIS=build/app/iris
$IRIS --version
$IRIS info "$FIXTURES/unet_sd15like_ldm.safetensors"
$IRIS info "$FIXTURES/data/clip_tokenizer"
$IRIS parity "$FIXTURES/clip_tokenizer_golden.jsonl" "$FIXTURES/llama_tokenizer_golden.jsonl"
