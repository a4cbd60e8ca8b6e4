// iris: the command-line front end. Thin: parse options, call the libraries, print.
#include <cstdio>
#include <exception>
#include <string>

#include <CLI/CLI.hpp>

#include "app/cli.h"
#include "core/error.h"
#include "core/runtime_env.h"
#include "core/torch_compat.h"

int main(int argc, char** argv) {
  iris::ensure_passive_openmp(argc, argv, /*huge_pages=*/true);
  iris::keep_freed_memory();
  CLI::App app{"Iris: image generation with attention adapters, and a vision-language model"};
  app.require_subcommand(0, 1);
  bool show_version = false;
  app.add_flag("--version", show_version, "Print the version and exit");
  iris::cli::add_info_command(app);
  iris::cli::add_parity_command(app);
  iris::cli::add_render_command(app);
  iris::cli::add_random_model_command(app);
  iris::cli::add_ask_command(app);
  iris::cli::add_random_llava_command(app);
  iris::cli::add_train_draft_command(app);
  iris::cli::add_train_visor_command(app);
  iris::cli::add_train_vlm_command(app);
  iris::cli::add_train_adapters_command(app);
  iris::cli::add_train_spm_command(app);
  iris::cli::add_starter_commands(app);
  iris::cli::add_eval_diffusion_command(app);
  iris::cli::add_eval_vlm_command(app);
  iris::cli::add_batch_command(app);
  iris::cli::add_vlm_command(app);
  iris::cli::add_showcase_command(app);
  try {
    // Subcommand callbacks run inside parse(); their exceptions arrive here.
    app.parse(argc, argv);
    if (show_version) {
      std::printf("iris %s (LibTorch %s)\n", IRIS_VERSION, iris::torch_version_string());
      return 0;
    }
    if (app.get_subcommands().empty()) std::printf("%s", app.help().c_str());
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const iris::Cancelled& e) {
    std::fprintf(stderr, "cancelled\n");
    return 130;
  } catch (const std::exception& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
