// Parent commands that several files hang their subcommands on (`iris train X`, `iris eval X`).
#include "app/cli.h"

namespace iris::cli {

namespace {
// The subcommand `name` of `app`, created (requiring a subcommand of its own) on first use.
CLI::App* parent_command(CLI::App& app, const std::string& name, const std::string& help) {
  for (CLI::App* sub : app.get_subcommands([&](CLI::App* s) { return s->get_name() == name; })) return sub;
  CLI::App* parent = app.add_subcommand(name, help);
  parent->require_subcommand(1);
  return parent;
}
}  // namespace

CLI::App* train_command(CLI::App& app) {
  return parent_command(app, "train", "Train a model or adapter (backbones frozen where the method says)");
}

CLI::App* eval_command(CLI::App& app) {
  return parent_command(app, "eval", "Measure a model on held-out Tinyworld scenes");
}

}  // namespace iris::cli
