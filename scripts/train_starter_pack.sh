#!/usr/bin/env bash
# Trains the starter pack's image half from scratch with fixed seeds, on 2 CPU cores:
#
#   scripts/train_starter_pack.sh                 # -> assets/starter/ (about 8.8 hours on 2 cores; README "The starter pack")
#
# Stages (each prints step, loss, it/s and ETA; each resumes from its checkpoint folder in
# $WORK, so rerunning the command after an interruption continues where it stopped, and a
# finished stage is skipped):
#   1. Tinyworld training images + captions      iris world export    -> $WORK/data
#   2. CLIP BPE tokenizer on the captions         iris train tokenizer -> $OUT/tokenizer/
#   3. AutoencoderKL 64x64 -> 4x16x16             iris train vae       -> $OUT/vae/
#   4. CLIP text + image encoders (contrastive)   iris train clip      -> $OUT/text_encoder/, image_encoder/
#   5. UNet on the VAE latents                    iris train unet      -> $OUT/unet/, scheduler/, model_index.json
#   6. VAE fine-tuned with a detail-weighted loss iris train vae --finetune -> $OUT/vae/
#   6b. its decoder alone, with an edge loss too    iris train vae --decoder-only -> $OUT/vae/
#   7. UNet trained on into the new latents       iris train unet (resumed) -> $OUT/unet/
#   7b. UNet + text encoder trained together      iris train unet --finetune --train-text-encoder
#       (on the 10000 images, then on 30000)       -> $OUT/unet/, $OUT/text_encoder/
#   8. IP-Adapter Plus + its image encoder        iris train ip-adapter -> $OUT/adapters/ip-adapter.safetensors, adapters/image_encoder/
#      (after scripts/train_vlm_pack.sh: the encoder starts as the VLM's vision tower)
#   9. PokeFusion style bank, every style         iris train style     -> $OUT/adapters/style-adapter.safetensors, adapters/styles/<name>.safetensors
#  10. SK-Adapter on the stick-figure images      iris train sk-adapter -> $OUT/adapters/sk-adapter.safetensors
#  11. Held-out evals: vae, t2i, ip, ip-text, style, skeleton   iris eval diffusion --task ...
#      -> tables + $WORK/eval_<task>.png (contact sheet) + $WORK/eval_<task>.json (all figures)
# The adapters train in $WORK/<stage>/ (their checkpoint/ lives there) and are copied into $OUT;
# a backbone stage redone deletes them (they were trained against the old backbone).
#
# Environment:
#   OUT=DIR        the pipeline folder (default assets/starter)
#   WORK=DIR       datasets and checkpoints, kept out of git (default runs/starter)
#   IRIS=PATH      the iris binary (default build/app/iris)
#   IMAGES=N       training images (default 10000)
#   SMOKE=1        a few steps per stage with test-sized models (checks the script, not quality)
#   EVAL_N=N       eval prompts (default 200; 0 skips the eval)
#   VAE_STEPS / CLIP_STEPS   override the trainers' default step counts
#   UNET_SCHEDULE  the UNet's schedule as TOTAL:STOP segments (default: the shipped pack's, below)
#   UNET_STEPS=N   one plain N-step schedule for the UNet instead
#   VAE_FT_STEPS   steps of the VAE fine-tune (default 3000)
#   VAE_DEC_STEPS  steps of the decoder-only fine-tune after it (default 1500)
#   UNET_CONTINUE  the UNet's schedule after the VAE fine-tune, TOTAL:STOP segments (default below)
#   JOINT_IMAGES   training images of the joint stage's second dataset (default 30000)
#   UNET_JOINT     the joint UNet + text encoder runs, DATA:STEPS:LR each (default below)
#   JOINT_THREADS  their threads (default 1, as the shipped runs; results depend on the count)
#   IP_STEPS / STYLE_STEPS / SK_STEPS     adapter steps (defaults below)
#   SK_LIMB_WEIGHT                        the SK-Adapter's limb loss weight (default 8; 0: plain MSE)
#   IP_BATCH                              the IP-Adapter's batch (default 64)
#   IP_TAIL                               the IP-Adapter's steps after IP_STEPS at lower learning
#                                         rates, TOTAL:LR segments (default below)
#   STYLE_OBJECT_WEIGHT                   the style bank's object loss weight (default 8; 0: plain MSE)
#   ADAPTER_BATCH / ADAPTER_LR            adapter batch and learning rate
#   ADAPTER_THREADS                       adapter threads (default 1, as the shipped adapters were
#                                         trained: results are bit-identical for a thread count)
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
  VAE_FT_STEPS=${VAE_FT_STEPS:-3} VAE_DEC_STEPS=${VAE_DEC_STEPS:-3} UNET_CONTINUE=${UNET_CONTINUE:-"6:6"}
  JOINT_IMAGES=${JOINT_IMAGES:-96} UNET_JOINT=${UNET_JOINT:-"data:3:2e-4 data-joint:3:2e-4"}
  IP_STEPS=${IP_STEPS:-3} IP_TAIL=${IP_TAIL:-"5:1.5e-4"} IP_BATCH=${IP_BATCH:-4} STYLE_STEPS=${STYLE_STEPS:-3} SK_STEPS=${SK_STEPS:-3}
  ADAPTER_BATCH=${ADAPTER_BATCH:-4} ADAPTER_LOG_EVERY=1
  EXTRA=(--tiny --batch 8 --log-every 1)
fi
# Adapter schedules (constant LR, AdamW). The adapters are small next to the UNet, so a larger
# learning rate than the IP-Adapter paper's 1e-4 (for SD1.5-sized models) converges in fewer steps.
# Measured on the full pack at batch 16, 1 thread, 2-core machine shared with other jobs:
# ip-adapter 0.18 s/step, style 0.14, sk-adapter 0.17-0.20 (plus ~1 min each to encode the
# dataset up front): these defaults take about 20 minutes together.
# The SK-Adapter weighs the latent cells under the figure's limbs 8x (--limb-weight): with a
# plain MSE it reached PCK@0.1 72 % after 1500 steps; weighted, 77 % after 1500 and 86 % after
# 3000 (100 held-out prompts; without the adapter 37 %).
# The style bank weighs latent cells covering an object or the figure 8x (--object-weight):
# styles were then recognised 69.5 % of the time instead of 66 % (on the 77 % backbone).
IP_STEPS=${IP_STEPS:-9000} IP_TAIL=${IP_TAIL:-"12000:1.5e-4 15000:5e-5"} IP_BATCH=${IP_BATCH:-64} STYLE_STEPS=${STYLE_STEPS:-800} SK_STEPS=${SK_STEPS:-3000} SK_LIMB_WEIGHT=${SK_LIMB_WEIGHT:-8}
STYLE_OBJECT_WEIGHT=${STYLE_OBJECT_WEIGHT:-8}
ADAPTER_BATCH=${ADAPTER_BATCH:-16} ADAPTER_LR=${ADAPTER_LR:-5e-4}
[ -x "$IRIS" ] || { echo "error: $IRIS not found; build first (scripts/build.sh) or set IRIS=" >&2; exit 1; }
mkdir -p "$WORK" "$OUT"

# shellcheck source=scripts/pack_stages.sh
. scripts/pack_stages.sh
# A stage redone invalidates the ones after it (called by `stage`).
stage_finished() {
  case $1 in
    data) invalidate tokenizer vae clip unet vae-finetune vae-decoder unet-continue unet-joint ip-adapter style sk-adapter ;;
    tokenizer) invalidate clip unet unet-continue unet-joint ip-adapter style sk-adapter ;;
    # The fine-tune starts from $OUT/vae, so only a redone VAE redoes it (a second fine-tune
    # of the fine-tuned VAE would move the latent space again).
    vae) invalidate unet vae-finetune vae-decoder unet-continue unet-joint ip-adapter style sk-adapter ;;
    clip) invalidate unet unet-continue unet-joint ip-adapter style sk-adapter ;;
    unet) invalidate unet-continue unet-joint ip-adapter style sk-adapter ;;
    # The decoder-only step leaves the latent space as it is: nothing after it depends on it.
    vae-finetune) invalidate vae-decoder unet-continue unet-joint ip-adapter style sk-adapter ;;
    unet-continue) invalidate unet-joint ip-adapter style sk-adapter ;;
    data-joint) invalidate unet-joint ip-adapter style sk-adapter ;;
    unet-joint) invalidate ip-adapter style sk-adapter ;;
  esac
}

# Marks stages to redo; an adapter's checkpoints go too (trained against the old backbone).
invalidate() {
  local s
  for s in "$@"; do
    rm -f "$WORK/$s.done"
    case $s in
      ip-adapter | style | sk-adapter | vae-finetune | vae-decoder) rm -rf "${WORK:?}/$s" ;;
      unet-joint) rm -rf "${WORK:?}"/unet-joint-* "${WORK:?}/pre-joint" ;;
    esac
  done
}

# Trains adapter $1 (an `iris train` subcommand) for $2 steps in $WORK/$1, resuming from its
# checkpoint when there is one.
train_adapter() {
  local kind=$1 steps=$2
  shift 2
  local resume=()
  [ -f "$WORK/$kind/checkpoint/trainer_state.safetensors" ] && resume=(--resume)
  $IRIS train "$kind" --model "$OUT" --data "${ADAPTER_DATA:-$WORK/data}" --out "$WORK/$kind" --seed $SEED --steps "$steps" \
    --batch "${ADAPTER_BATCH_OF_STAGE:-$ADAPTER_BATCH}" --lr "$ADAPTER_LR" --log-every "${ADAPTER_LOG_EVERY:-25}" \
    --threads "${ADAPTER_THREADS:-1}" "${resume[@]}" "$@"
}
ip_adapter_stage() {
  # The image prompt is read as the caption that describes it: the resampler's 64 tokens (one per
  # text position) regress onto the text encoder's states of world::complete_caption, and to_k_ip /
  # to_v_ip stay the copies of to_k / to_v they start as (no denoising loss, no UNet pass). The
  # image encoder starts as the VLM's vision tower (its patch features were taught what covers
  # them; from the pack's contrastive encoder, even with --patch-labels, the image prompt read
  # 57 % instead of 72 % at 3000 steps) and trains with it. On the 30000 images at batch 64 (the
  # 10 % of rows without an image, --drop-text 0.7's split, learn the empty prompt's states).
  # The encoder also keeps reading each patch's colour, shape and size (--patch-labels 0.2):
  # shapes 73 % instead of 69 %, 80.2 % of the reference in all against 79.6 % at 12000 steps.
  # Then the learning rate steps down (IP_TAIL, TOTAL:LR segments resumed from the checkpoint):
  # without the labels, 9000 steps at 5e-4 read 79.0 %, on to 12000 at 5e-4 79.1 %, at 1.5e-4 79.6 %;
  # with them 80.2 % at 12000, and 80.6 % after 3000 more at 5e-5.
  local args=(--plus --image-encoder "$OUT/vlm" --train-image-encoder --caption-regression 1 --denoising-weight 0
              --patch-labels 0.2 --drop-text 0.7 --f16)
  ADAPTER_DATA="$WORK/data-joint" ADAPTER_BATCH_OF_STAGE="$IP_BATCH" train_adapter ip-adapter "$IP_STEPS" "${args[@]}"
  local segment
  for segment in $IP_TAIL; do
    ADAPTER_DATA="$WORK/data-joint" ADAPTER_BATCH_OF_STAGE="$IP_BATCH" ADAPTER_LR="${segment#*:}" \
      train_adapter ip-adapter "${segment%%:*}" "${args[@]}"
  done
  mkdir -p "$OUT/adapters"
  cp "$WORK/ip-adapter/ip-adapter.safetensors" "$OUT/adapters/"
  # The trained encoder goes beside the adapter, where the loader looks for it first.
  rm -rf "$OUT/adapters/image_encoder"
  cp -r "$WORK/ip-adapter/image_encoder" "$OUT/adapters/"
}
style_stage() {
  train_adapter style "$STYLE_STEPS" --object-weight "$STYLE_OBJECT_WEIGHT"
  mkdir -p "$OUT/adapters/styles"
  cp "$WORK/style/style-adapter.safetensors" "$OUT/adapters/"
  cp "$WORK"/style/styles/*.safetensors "$OUT/adapters/styles/"
}
sk_adapter_stage() {
  train_adapter sk-adapter "$SK_STEPS" --limb-weight "$SK_LIMB_WEIGHT"
  mkdir -p "$OUT/adapters"
  cp "$WORK/sk-adapter/sk-adapter.safetensors" "$OUT/adapters/"
}

steps() { [ -n "${1:-}" ] && echo "--steps $1" || true; }

stage data $IRIS world export --out "$WORK/data" --count "$IMAGES" --seed $SEED --split train
stage tokenizer $IRIS train tokenizer --data "$WORK/data" --out "$OUT" ${EXTRA[0]:+--tiny}
stage vae $IRIS train vae --data "$WORK/data" --out "$OUT" --work "$WORK/vae" --seed $SEED \
  $(steps "${VAE_STEPS:-}") "${EXTRA[@]}"
stage clip $IRIS train clip --data "$WORK/data" --out "$OUT" --work "$WORK/clip" --seed $SEED \
  $(steps "${CLIP_STEPS:-}") "${EXTRA[@]}"
# The shipped UNet was trained across sessions and its cosine schedule retargeted on the way:
# 4000 steps, then on to 11000, the schedule spanning 13000 steps until step 4250, 10000 until
# 5500, then 11000. Each TOTAL:STOP segment replays one of those runs exactly (`--steps TOTAL
# --stop-at STOP`; the trainer is deterministic across resumes), so this reproduces the shipped
# weights; a rerun after an interruption resumes inside the right segment.
UNET_SCHEDULE=${UNET_SCHEDULE:-"4000:4000 13000:4250 10000:5500 11000:11000"}
# The UNet run in $WORK/unet, one `--steps TOTAL --stop-at STOP` call per TOTAL:STOP argument.
unet_segments() {
  local seg
  for seg in "$@"; do
    $IRIS train unet --data "$WORK/data" --out "$OUT" --work "$WORK/unet" --seed $SEED "${EXTRA[@]}" \
      --steps "${seg%%:*}" --stop-at "${seg##*:}"
  done
}
if [ -n "${UNET_STEPS:-}" ]; then
  stage unet unet_segments "$UNET_STEPS:$UNET_STEPS"
else
  stage unet unet_segments $UNET_SCHEDULE
fi

# The first VAE (plain L1) lost small shapes' colours and thin limbs: the analyzer read 44 % of
# held-out renders' attributes back from its round trip (`iris eval diffusion --task vae`), a
# ceiling for every model on its latents. Fine-tuned with edges and small shapes weighted up it
# reads 94 %. Its latent space moves with it, so the UNet trains on into the new latents from
# where it was (its schedule retargeted to UNET_CONTINUE), and the adapters train after that.
VAE_FT_STEPS=${VAE_FT_STEPS:-3000}
stage vae-finetune $IRIS train vae --finetune --detail-weight 9 --data "$WORK/data" --out "$OUT" \
  --work "$WORK/vae-finetune" --seed $SEED --steps "$VAE_FT_STEPS" --lr 5e-4 --warmup 100 "${EXTRA[@]}"
# Plain L1 forgives an edge smeared over two or three pixels, and the pixelated style's 2-px
# blocks came back as ramps: the round trip kept that style 71 % of the time. The decoder alone
# (the latent space, so every model trained on it, stays as it is) trained on with an L1 loss on
# neighbouring-pixel differences too keeps it 91 % (round trip 94.1 -> 95.0 %).
VAE_DEC_STEPS=${VAE_DEC_STEPS:-1500}
stage vae-decoder $IRIS train vae --decoder-only --detail-weight 9 --gradient-weight 2 --data "$WORK/data" \
  --out "$OUT" --work "$WORK/vae-decoder" --seed 1 --steps "$VAE_DEC_STEPS" --lr 2e-4 --warmup 50 --threads 1 "${EXTRA[@]}"
UNET_CONTINUE=${UNET_CONTINUE:-"17000:17000"}
stage unet-continue unet_segments $UNET_CONTINUE

# The contrastive text encoder only had to tell captions apart; nothing taught it which colour,
# size and position belong to which object of "a red circle on the left and a blue square", and
# the UNet it conditions had stopped improving (1000 more steps with it frozen: 50.8 -> 50.9 %
# on the t2i eval). Trained with the UNet on the denoising loss (`--train-text-encoder`), first
# on the 10000 images, then on 30000 (the first 10000 are the same scenes), t2i reads 59 %;
# two more 8000-step cycles on the 30000 images lift it to 77 % and then 86 %.
# Each DATA:STEPS:LR run is one cosine cycle (`--finetune`: fresh optimizer) from the weights
# the run before it exported, in its own $WORK/unet-joint-N. The stage first saves the UNet
# and text encoder it starts from (or restores them, when it is redone), so a rerun starts
# from the same weights.
JOINT_IMAGES=${JOINT_IMAGES:-30000}
UNET_JOINT=${UNET_JOINT:-"data:1000:2e-4 data-joint:4000:2e-4 data-joint:8000:2e-4 data-joint:8000:2e-4"}
unet_joint_runs() {
  local run i=0 data steps lr
  if [ -d "$WORK/pre-joint" ]; then
    rm -rf "$OUT/unet" "$OUT/text_encoder"
    cp -r "$WORK/pre-joint/unet" "$WORK/pre-joint/text_encoder" "$OUT/"
  else
    mkdir -p "$WORK/pre-joint.tmp"
    cp -r "$OUT/unet" "$OUT/text_encoder" "$WORK/pre-joint.tmp/"
    mv "$WORK/pre-joint.tmp" "$WORK/pre-joint"
  fi
  for run in "$@"; do
    i=$((i + 1))
    IFS=: read -r data steps lr <<< "$run"
    $IRIS train unet --finetune --train-text-encoder --data "$WORK/$data" --out "$OUT" --work "$WORK/unet-joint-$i" \
      --seed $SEED --steps "$steps" --lr "$lr" --warmup 100 --threads "${JOINT_THREADS:-1}" "${EXTRA[@]}"
  done
}
stage data-joint $IRIS world export --out "$WORK/data-joint" --count "$JOINT_IMAGES" --seed $SEED --split train
stage unet-joint unet_joint_runs $UNET_JOINT

# The IP-Adapter's image encoder starts as the VLM's vision tower (README "The starter pack"), so
# this stage waits for scripts/train_vlm_pack.sh; run this script again after it.
if [ -f "$OUT/vlm/config.json" ]; then
  stage ip-adapter ip_adapter_stage
else
  echo "== ip-adapter: waits for the VLM half ($OUT/vlm: scripts/train_vlm_pack.sh), then run this script again"
fi
stage style style_stage
stage sk-adapter sk_adapter_stage

echo "== pack: $OUT ($(du -sh "$OUT" | cut -f1))"
if [ "$EVAL_N" -gt 0 ]; then
  # skeleton-unnamed: the same skeletons with prompts that leave the pose unsaid (the text model
  # draws the pose a prompt names by itself, so only then does the baseline show the adapter's part).
  for task in vae t2i ip ip-text style skeleton skeleton-unnamed; do
    echo "== eval $task (held-out scenes)"
    extra=()
    if [[ $task == ip* ]] && [ ! -f "$OUT/adapters/ip-adapter.safetensors" ]; then
      echo "(no IP-Adapter yet)"
      continue
    fi
    case $task in
      vae | t2i) adapter=() ;;
      ip | ip-text) adapter=(--ip-adapter "$OUT/adapters/ip-adapter.safetensors") ;;
      style) adapter=(--style-adapter "$OUT/adapters/style-adapter.safetensors") ;;
      skeleton) adapter=(--sk-adapter "$OUT/adapters/sk-adapter.safetensors") ;;
      skeleton-unnamed) adapter=(--sk-adapter "$OUT/adapters/sk-adapter.safetensors") extra=(--unnamed-pose) ;;
    esac
    $IRIS eval diffusion --model "$OUT" --task "${task%-unnamed}" --n "$EVAL_N" "${adapter[@]}" "${extra[@]}" \
      --contact-sheet "$WORK/eval_$task.png" --json "$WORK/eval_$task.json"
  done
fi
