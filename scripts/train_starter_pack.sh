#!/usr/bin/env bash
# Trains the starter pack's image half from scratch with fixed seeds, on 2 CPU cores:
#
#   scripts/train_starter_pack.sh                 # -> assets/starter/ (about an hour on 2 cores)
#
# Stages (each prints step, loss, it/s and ETA; each resumes from its checkpoint folder in
# $WORK, so rerunning the command after an interruption continues where it stopped, and a
# finished stage is skipped):
#   1. Tinyworld training images + captions      iris world export    -> $WORK/data
#   2. CLIP BPE tokenizer on the captions         iris train tokenizer -> $OUT/tokenizer/
#   3. AutoencoderKL 64x64 -> 4x16x16             iris train vae       -> $OUT/vae/
#   4. CLIP text + image encoders (contrastive)   iris train clip      -> $OUT/text_encoder/, image_encoder/
#   5. UNet on the VAE latents                    iris train unet      -> $OUT/unet/, scheduler/, model_index.json
#   6. Held-out text-to-image eval                iris eval diffusion  -> table + $WORK/eval_contact_sheet.png
#
# Environment:
#   OUT=DIR        the pipeline folder (default assets/starter)
#   WORK=DIR       datasets and checkpoints, kept out of git (default runs/starter)
#   IRIS=PATH      the iris binary (default build/app/iris)
#   IMAGES=N       training images (default 10000)
#   SMOKE=1        a few steps per stage with test-sized models (checks the script, not quality)
#   EVAL_N=N       eval prompts (default 200; 0 skips the eval)
#   VAE_STEPS / CLIP_STEPS / UNET_STEPS   override the trainers' default step counts
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-assets/starter}
WORK=${WORK:-runs/starter}
IRIS=${IRIS:-build/app/iris}
IMAGES=${IMAGES:-10000}
EVAL_N=${EVAL_N:-200}
SEED=1234
EXTRA=()
if [ "${SMOKE:-0}" = 1 ]; then
  IMAGES=${IMAGES_SMOKE:-64}
  EVAL_N=${EVAL_N_SMOKE:-4}
  VAE_STEPS=${VAE_STEPS:-3} CLIP_STEPS=${CLIP_STEPS:-3} UNET_STEPS=${UNET_STEPS:-3}
  EXTRA=(--tiny --batch 8 --log-every 1)
fi
[ -x "$IRIS" ] || { echo "error: $IRIS not found; build first (scripts/build.sh) or set IRIS=" >&2; exit 1; }
mkdir -p "$WORK" "$OUT"

# Runs stage $1 unless $WORK/$1.done exists; a stage redone invalidates the ones after it.
stage() {
  local name=$1
  shift
  if [ -f "$WORK/$name.done" ]; then
    echo "== $name: done (delete $WORK/$name.done to redo)"
    return
  fi
  echo "== $name"
  local t0=$SECONDS
  "$@"
  echo "$((SECONDS - t0)) s" > "$WORK/$name.done"
  echo "== $name finished in $((SECONDS - t0)) s"
  case $name in
    data) rm -f "$WORK"/{tokenizer,vae,clip,unet}.done ;;
    tokenizer) rm -f "$WORK"/{clip,unet}.done ;;
    vae | clip) rm -f "$WORK/unet.done" ;;
  esac
}

steps() { [ -n "${1:-}" ] && echo "--steps $1" || true; }

stage data $IRIS world export --out "$WORK/data" --count "$IMAGES" --seed $SEED --split train
stage tokenizer $IRIS train tokenizer --data "$WORK/data" --out "$OUT" ${EXTRA[0]:+--tiny}
stage vae $IRIS train vae --data "$WORK/data" --out "$OUT" --work "$WORK/vae" --seed $SEED \
  $(steps "${VAE_STEPS:-}") "${EXTRA[@]}"
stage clip $IRIS train clip --data "$WORK/data" --out "$OUT" --work "$WORK/clip" --seed $SEED \
  $(steps "${CLIP_STEPS:-}") "${EXTRA[@]}"
stage unet $IRIS train unet --data "$WORK/data" --out "$OUT" --work "$WORK/unet" --seed $SEED \
  $(steps "${UNET_STEPS:-}") "${EXTRA[@]}"

echo "== pack: $OUT ($(du -sh "$OUT" | cut -f1))"
if [ "$EVAL_N" -gt 0 ]; then
  echo "== eval (held-out captions)"
  $IRIS eval diffusion --model "$OUT" --n "$EVAL_N" --contact-sheet "$WORK/eval_contact_sheet.png"
fi
