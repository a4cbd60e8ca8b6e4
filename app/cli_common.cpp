// Pieces several subcommands share: the SD model options and Ctrl+C as a cancel request.
#include <csignal>
#include <cstdio>

#include "app/cli.h"
#include "core/error.h"

namespace iris::cli {

namespace {
CancelToken g_interrupt;
extern "C" void iris_cli_on_sigint(int) { g_interrupt.cancel(); }
}  // namespace

void add_sd_model_options(CLI::App* cmd, SdModelCliOptions& o) {
  cmd->add_option("--model", o.model, "Diffusers folder or single-file .safetensors checkpoint")->required();
  cmd->add_option("--device", o.device, "cpu | cuda | cuda:N | auto")->capture_default_str();
  cmd->add_option("--threads", o.threads, "CPU threads (0: all cores)");
  cmd->add_option("--tokenizer", o.tokenizer, "Tokenizer folder (single-file checkpoints carry none)");
  cmd->add_option("--ip-adapter", o.ip_adapter, "IP-Adapter weights (.safetensors, original or diffusers layout)");
  cmd->add_option("--image-encoder", o.image_encoder, "CLIP image encoder folder (default: image_encoder/ beside the IP-Adapter file, else the model's)");
  cmd->add_option("--style-adapter", o.style_adapter, "PokeFusion style adapter (style-adapter.safetensors)");
  cmd->add_option("--sk-adapter", o.sk_adapter, "SK-Adapter weights (sk-adapter.safetensors)");
}

SdLoadOptions SdModelCliOptions::load_options() const {
  SdLoadOptions lo;
  lo.device = device;
  lo.tokenizer_dir = tokenizer;
  lo.ip_adapter = ip_adapter;
  lo.image_encoder_dir = image_encoder;
  lo.style_adapter = style_adapter;
  lo.sk_adapter = sk_adapter;
  lo.log = [](const std::string& s) { std::fprintf(stderr, "note: %s\n", s.c_str()); };
  return lo;
}

int64_t parse_visor_budget(const std::string& s) {
  if (s.empty() || s == "auto") return -1;
  size_t used = 0;
  long long v = -1;
  try {
    v = std::stoll(s, &used);
  } catch (...) {
    used = 0;
  }
  if (used != s.size() || v < 0) throw ConfigError("--visor-budget " + s + ": expected auto or a budget 0..N");
  return v;
}

std::function<bool()> cancel_on_interrupt() {
  g_interrupt.reset();
  std::signal(SIGINT, iris_cli_on_sigint);
  return g_interrupt.as_callback();
}

}  // namespace iris::cli
