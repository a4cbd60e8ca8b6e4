#pragma once
// Subcommands of the `iris` CLI. Each adds itself to the app; the handlers are thin and
// call the libraries.
#include <CLI/CLI.hpp>

namespace iris::cli {

void add_info_command(CLI::App& app);
void add_parity_command(CLI::App& app);
void add_render_command(CLI::App& app);
void add_random_model_command(CLI::App& app);

}  // namespace iris::cli
