// iris train vlm --encoder DIR --tokenizer tokenizer.model --out DIR [--work DIR]: the starter
// pack's VLM (pipelines/vlm_training.h), stage by stage (augment with --ftz, vision with
// --vision-steps, text, grid with --grid-steps, align, finetune), each resumable from --work and skipped once done.
#include <cstdio>
#include <memory>
#include <string>

#include "app/cli.h"
#include "core/runtime.h"
#include "pipelines/vlm_training.h"

namespace iris::cli {

namespace {

void add_stage_options(CLI::App* cmd, const std::string& name, VlmStageSchedule& s) {
  cmd->add_option("--" + name + "-steps", s.steps, "Steps of the " + name + " stage (-1: default, 0: skip)")
      ->capture_default_str();
  cmd->add_option("--" + name + "-lr", s.lr, "Peak learning rate of the " + name + " stage (0: default)");
  cmd->add_option("--" + name + "-warmup", s.warmup, "Warm-up steps of the " + name + " stage (-1: default)");
  cmd->add_option("--" + name + "-batch", s.batch, "Batch of the " + name + " stage (0: --batch)");
}

}  // namespace

void add_train_vlm_command(CLI::App& app) {
  struct Opts {
    VlmTrainOptions t;
    int threads = 0;
    bool f32 = false, untie = false;
  };
  auto o = std::make_shared<Opts>();
  CLI::App* cmd = train_command(app)->add_subcommand(
      "vlm", "Train the starter pack's VLM (LLaVA layout, optional FtZ) on Tinyworld: augment, vision, text, grid, align, "
      "finetune");
  VlmTrainOptions& t = o->t;
  cmd->add_option("--encoder", t.encoder_dir, "CLIP vision encoder folder (the pack's image_encoder/)")->required();
  cmd->add_option("--tokenizer", t.tokenizer_path, "SentencePiece tokenizer.model (copied into --out)")->required();
  cmd->add_option("--out", t.out_dir, "LLaVA folder to write (iris ask --model reads it)")->required();
  cmd->add_option("--init", t.init_dir,
                  "Start from a trained LLaVA folder (e.g. assets/starter/vlm) with the same config: only the stages whose "
                  "steps are given run (the fine-tune always)");
  cmd->add_flag("--encoder-over-init", t.encoder_over_init,
                "With --init: the vision tower comes from --encoder (e.g. an encoder trained further elsewhere)");
  cmd->add_option("--work", t.work_dir, "Checkpoint folder (one subfolder per stage); a rerun resumes, done stages are skipped");
  cmd->add_flag("--ftz", t.ftz, "FtZ: pretrain a conv augmenting encoder and fuse it into the vision tower");
  cmd->add_flag("--train-vision", t.train_vision, "Finetune also trains the vision tower (and the augmenting encoder)");
  cmd->add_flag("--tiny", t.tiny, "Test-sized model, 2 steps per stage");
  cmd->add_option("--seed", t.seed, "Seed (initialisation and data)")->capture_default_str();
  cmd->add_option("--threads", o->threads, "CPU threads (0: all cores)")->capture_default_str();
  cmd->add_option("--batch", t.batch, "Sequences per step (0: 8, tiny 2)")->capture_default_str();
  cmd->add_option("--max-text-tokens", t.max_text_tokens, "Text tokens per sequence (0: 192, tiny 64)")->capture_default_str();
  cmd->add_option("--scenes", t.scenes, "Draw from this many training scenes (0: a fresh scene every time)")
      ->capture_default_str();
  cmd->add_option("--describe-prob", t.describe_probability, "Share of sequences with a long description")
      ->capture_default_str();
  cmd->add_flag("--balance-existence", t.balance_existence,
                "Image sequences keep as many \"is there a ...?\" probes answered no as answered yes");
  cmd->add_flag("--relation-drill", t.relation_drill,
                "Image sequences ask two relation question pairs per scene, yes/no ones answered yes half "
                "the time, with a lookup on both objects");
  cmd->add_option("--ema", t.finetune_ema, "EMA decay of the finetune weights, exported (0: off)")->capture_default_str();
  add_stage_options(cmd, "augment", t.augment);
  add_stage_options(cmd, "vision", t.vision);
  add_stage_options(cmd, "text", t.text);
  add_stage_options(cmd, "grid", t.grid);
  add_stage_options(cmd, "align", t.align);
  add_stage_options(cmd, "finetune", t.finetune);
  VlmModelSizes& s = t.sizes;
  cmd->add_option("--hidden", s.hidden, "LLaMA width (0: 256, tiny 64)");
  cmd->add_option("--layers", s.layers, "LLaMA layers (0: 4, tiny 2)");
  cmd->add_option("--heads", s.heads, "Attention heads (0: 4)");
  cmd->add_option("--kv-heads", s.kv_heads, "Key/value heads (0: = heads)");
  cmd->add_option("--intermediate", s.intermediate, "MLP width (0: 704, tiny 128)");
  cmd->add_option("--max-positions", s.max_positions, "Context length (0: 512, tiny 256)");
  cmd->add_flag("--untie", o->untie, "Separate LM head (default: tied to the embeddings)");
  cmd->add_option("--feature-layer", s.feature_layer, "vision_feature_layer (hidden_states index)")->capture_default_str();
  cmd->add_flag("--image-position", s.image_position,
                "A learned position embedding added to each projected image token (config \"image_position_embedding\")");
  cmd->add_option("--aug-hidden", s.aug_hidden, "FtZ conv encoder width (0: 64, tiny 16)");
  cmd->add_option("--aug-layers", s.aug_layers, "FtZ conv encoder layers (0: 4, tiny 2)");
  cmd->add_option("--aug-patch", s.aug_patch, "FtZ conv encoder patch size (0: 8, tiny 16)");
  cmd->add_flag("--aug-position", s.aug_position, "FtZ conv encoder with a learned position embedding per token");
  cmd->add_flag("--augment-labels", t.augment_labels,
                "FtZ augment stage also predicts each patch's colour, shape and size (dense labels)");
  cmd->add_option("--finetune-labels", t.finetune_labels,
                  "With --train-vision: weight of dense patch labels (colour, shape, size) read from the vision features "
                  "during the fine-tune (0: off)")
      ->capture_default_str();
  cmd->add_flag("--scene-labels", t.scene_labels,
                "The vision stage's and fine-tune's patch labels also read the scene's style and background from "
                "every patch");
  cmd->add_option("--align-grid", t.align_grid,
                  "After a grid stage (--grid-steps): weight of align's pull of the projected image tokens towards "
                  "the symbolic image the LM learned to read")
      ->capture_default_str();
  cmd->add_flag("--grid-own-table", t.grid_own_table,
                "The grid stage's symbolic image names each label with a learned vector of its own instead of the "
                "LM's word embeddings");
  cmd->add_option("--lookup", t.lookup_weight,
                  "Weight of the lookup loss in the grid, align and fine-tune stages: one attention head is taught "
                  "to look at the patches an answer is read from (0: off)")
      ->capture_default_str();
  cmd->add_option("--lookup-layer", t.lookup_layer,
                  "The LM layer whose head 0 the lookup loss teaches (< 0: from the last)")
      ->capture_default_str();
  cmd->add_flag("--isolated-turns", t.isolated_turns,
                "Image sequences of the grid, align and fine-tune stages lay every question out as a first turn "
                "that sees only the image prefix and itself (no answer copied from another turn)");
  cmd->add_option("--paraphrase", t.paraphrase,
                  "The text stage's descriptions and captions reworded with synonyms (big, located, ...), each "
                  "swapped with this probability (0: off)")
      ->capture_default_str();
  cmd->add_option("--finetune-text", t.finetune_text_share,
                  "Share of the fine-tune's steps that are text-stage steps (keeps what the text stage taught; 0: off)")
      ->capture_default_str();
  cmd->add_option("--log-every", t.log_every, "Progress line every N steps")->capture_default_str();
  cmd->add_option("--checkpoint-every", t.checkpoint_every, "Checkpoint every N steps")->capture_default_str();
  cmd->add_option("--check", t.check, "Answer N held-out questions at the end and report exact-match accuracy")
      ->capture_default_str();
  cmd->add_flag("--f32", o->f32, "Store the weights as F32 (default F16)");
  cmd->callback([o] {
    set_threads(o->threads);
    VlmTrainOptions t = o->t;
    t.f16 = !o->f32;
    t.sizes.tie_embeddings = !o->untie;
    t.progress.should_cancel = cancel_on_interrupt();
    const VlmTrainReport r = train_vlm(t);
    std::printf("[vlm] stages:");
    for (const VlmStageReport& st : r.stages)
      std::printf("  %s %s", st.name.c_str(),
                  st.skipped ? "skipped" : (std::to_string(st.seconds_per_step).substr(0, 5) + " s/step").c_str());
    std::printf("\n[vlm] wrote %s\n", r.output.c_str());
    if (r.check.questions > 0)
      std::printf("[vlm] held-out exact match %.1f%% (%lld questions)\n", 100.0 * r.check.accuracy(),
                  static_cast<long long>(r.check.questions));
  });
}

}  // namespace iris::cli
