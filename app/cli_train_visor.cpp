// iris train visor --from LLAVA_DIR --out DIR [--work DIR]: a VISOR model (sparse vision-language
// interaction, vlm/visor.h) from a trained LLaVA folder: universal training over budgets, router
// pseudo-labels and training, export, and a held-out accuracy / visual-FLOPs table
// (pipelines/visor_training.h). Resumable from --work.
#include <cstdio>
#include <memory>
#include <string>

#include "app/cli.h"
#include "core/runtime.h"
#include "pipelines/visor_training.h"

namespace iris::cli {

void add_train_visor_command(CLI::App& app) {
  struct Opts {
    VisorTrainOptions t;
    int threads = 0;
    std::string router_label = "correct";
  };
  auto o = std::make_shared<Opts>();
  VisorTrainOptions& t = o->t;
  CLI::App* cmd = train_command(app)->add_subcommand(
      "visor", "Train a VISOR model (text-only LM layers, cross-attention to the image, optional self-attention "
               "blocks chosen by a router) from a LLaVA folder");
  cmd->add_option("--from", t.llava_dir, "LLaVA folder to start from (iris train vlm / iris random-llava)")->required();
  cmd->add_option("--out", t.out_dir, "VISOR folder to write (iris ask --model reads it)")->required();
  cmd->add_option("--work", t.work_dir, "Checkpoint folder; a rerun resumes");
  cmd->add_option("--steps", t.steps, "Universal training steps (one random budget per step)")->capture_default_str();
  cmd->add_option("--batch", t.batch, "Scenes per step")->capture_default_str();
  cmd->add_option("--questions-per-image", t.questions_per_image,
                  "Distinct questions asked about each scene of a step (the image encoded once)")
      ->capture_default_str();
  cmd->add_option("--lr", t.lr, "Peak learning rate")->capture_default_str();
  cmd->add_option("--warmup", t.warmup, "Warm-up steps")->capture_default_str();
  cmd->add_option("--cross-layers", t.cross_layers, "Cross-attention layers (0: half the LM layers, rounded up)")
      ->capture_default_str();
  cmd->add_option("--self-layers", t.self_layers, "Optional self-attention layers (-1: as many as cross-attention)")
      ->capture_default_str();
  cmd->add_option("--sa-intermediate", t.sa_intermediate, "MLP width of the self-attention blocks (0: the LM's)")
      ->capture_default_str();
  cmd->add_option("--position-kernel", t.position_kernel,
                  "Kernel of the image tokens' depthwise position convolution, odd (0: the config's default, 3); "
                  "2 x grid side - 1 lets it encode absolute position")
      ->capture_default_str();
  cmd->add_flag("--position-embedding", t.position_embedding,
                "Add a learned position embedding to each image token (cross-attention keys carry no position)");
  cmd->add_option("--router-hidden", t.router_hidden, "Router MLP width")->capture_default_str();
  cmd->add_flag("!--freeze-lm", t.train_language_model, "Keep the LM layers frozen (train only VISOR blocks and projector)");
  cmd->add_option("--describe-prob", t.describe_probability, "Share of \"Describe the image.\" questions")
      ->capture_default_str();
  cmd->add_flag("--balance-existence", t.balance_existence,
                "Universal training asks as many \"is there a ...?\" probes answered no as answered yes");
  cmd->add_option("--lookup", t.lookup_weight,
                  "Lookup loss weight: a cross-attention head is taught to look at the patches an answer is read "
                  "from (0: off)")
      ->capture_default_str();
  cmd->add_option("--lookup-block", t.lookup_block, "Cross-attention block of the lookup head (-1: the last)")
      ->capture_default_str();
  cmd->add_option("--router-examples", t.router_examples, "Questions pseudo-labelled for the router")->capture_default_str();
  cmd->add_option("--router-steps", t.router_steps, "Router training steps")->capture_default_str();
  cmd->add_option("--router-label", o->router_label,
                  "Pseudo-labels: correct = the cheapest budget as right as the full budget (METHODS.md), same = the "
                  "cheapest budget giving the full budget's answer")
      ->check(CLI::IsMember({"correct", "same"}))
      ->capture_default_str();
  cmd->add_option("--router-lr", t.router_lr, "Router learning rate")->capture_default_str();
  cmd->add_option("--eval", t.eval_questions, "Held-out questions for the accuracy / FLOPs table (0: none)")
      ->capture_default_str();
  cmd->add_option("--max-tokens", t.max_new_tokens, "Most new tokens per answer (labels, eval)")->capture_default_str();
  cmd->add_option("--seed", t.seed, "Seed (initialisation and data)")->capture_default_str();
  cmd->add_option("--threads", o->threads, "CPU threads (0: all cores)")->capture_default_str();
  cmd->add_flag("--f16", t.f16, "Store the weights as F16");
  cmd->add_option("--log-every", t.log_every, "Progress line every N steps")->capture_default_str();
  cmd->add_option("--checkpoint-every", t.checkpoint_every, "Checkpoint every N steps")->capture_default_str();
  cmd->callback([o] {
    set_threads(o->threads);
    VisorTrainOptions t = o->t;
    t.router_label = o->router_label == "same" ? VisorTrainOptions::RouterLabel::kSameAnswer
                                               : VisorTrainOptions::RouterLabel::kCorrect;
    t.progress.should_cancel = cancel_on_interrupt();
    const VisorTrainReport r = train_visor(t);
    if (!r.universal_losses.empty())
      std::printf("[visor] universal step %lld, last loss %.4f\n", static_cast<long long>(r.universal_step),
                  r.universal_losses.back());
    std::printf("[visor] wrote %s\n", r.output.c_str());
  });
}

}  // namespace iris::cli
