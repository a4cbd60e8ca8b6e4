#pragma once
// Subcommands of the `iris` CLI. Each adds itself to the app; the handlers are thin and
// call the libraries.
#include <CLI/CLI.hpp>

#include <cstdint>
#include <functional>
#include <string>

#include "core/progress.h"
#include "pipelines/sd_model.h"

namespace iris::cli {

// The options that say which SD model (and adapters) to load, shared by render and batch.
struct SdModelCliOptions {
  std::string model, device = "cpu", tokenizer, ip_adapter, image_encoder, style_adapter, sk_adapter;
  int threads = 0;
  SdLoadOptions load_options() const;  // notes from loading go to stderr
};
void add_sd_model_options(CLI::App* cmd, SdModelCliOptions& options);

// Ctrl+C from here on asks the running operation to stop (between steps): pass the result as
// a Progress::should_cancel. The operation then throws iris::Cancelled (exit code 130).
std::function<bool()> cancel_on_interrupt();

// --visor-budget: "auto" or "" (-1, the router decides) or a budget >= 0; ConfigError otherwise.
int64_t parse_visor_budget(const std::string& s);

void add_info_command(CLI::App& app);
void add_parity_command(CLI::App& app);
void add_render_command(CLI::App& app);
void add_random_model_command(CLI::App& app);
void add_ask_command(CLI::App& app);           // iris ask (LLaVA visual question answering)
void add_random_llava_command(CLI::App& app);  // iris random-llava (a tiny random LLaVA folder)
void add_train_draft_command(CLI::App& app);  // iris train draft (ViSpec)
void add_train_visor_command(CLI::App& app);  // iris train visor (VISOR from a LLaVA folder)
void add_train_vlm_command(CLI::App& app);    // iris train vlm (the starter pack's VLM)
void add_train_adapters_command(CLI::App& app);  // iris train ip-adapter | style | sk-adapter
void add_train_spm_command(CLI::App& app);  // iris train spm (SentencePiece BPE tokenizer)
void add_starter_commands(CLI::App& app);  // iris train tokenizer | vae | clip | unet; iris world export
void add_eval_diffusion_command(CLI::App& app);  // iris eval diffusion
void add_eval_vlm_command(CLI::App& app);  // iris eval vlm
void add_batch_command(CLI::App& app);  // iris batch JOBS.jsonl --out DIR
void add_vlm_command(CLI::App& app);  // iris vlm sinks
void add_showcase_command(CLI::App& app);  // iris showcase (the pack's labelled grid)

// `iris train`: the parent of every trainer (`iris train vae`, `iris train style`, ...). Created
// on first use; each trainer's file adds its own subcommand to it.
CLI::App* train_command(CLI::App& app);
// `iris eval`: the parent of every evaluation (`iris eval diffusion`, ...), created on first use.
CLI::App* eval_command(CLI::App& app);

}  // namespace iris::cli
