// iris info PATH: what a checkpoint folder or file holds.
#include <cstdio>
#include <map>
#include <string>

#include "app/cli.h"
#include "core/checkpoint.h"

namespace iris::cli {

namespace {

std::string human_count(double n) {
  char buf[32];
  if (n >= 1e9) std::snprintf(buf, sizeof buf, "%.2fB", n / 1e9);
  else if (n >= 1e6) std::snprintf(buf, sizeof buf, "%.2fM", n / 1e6);
  else if (n >= 1e3) std::snprintf(buf, sizeof buf, "%.1fK", n / 1e3);
  else std::snprintf(buf, sizeof buf, "%.0f", n);
  return buf;
}

// Single files hold whole pipelines under top-level prefixes; name the known LDM ones.
std::string group_of(const std::string& key) {
  static const std::pair<const char*, const char*> known[] = {
      {"model.diffusion_model.", "unet (LDM naming)"},
      {"first_stage_model.", "vae (LDM naming)"},
      {"cond_stage_model.", "text encoder (LDM naming)"},
      {"conditioner.", "text encoders (SGM naming)"},
      {"input.", "fixture inputs"},
      {"output.", "fixture outputs"},
  };
  for (const auto& [prefix, label] : known)
    if (key.rfind(prefix, 0) == 0) return label;
  const auto dot = key.find('.');
  return dot == std::string::npos ? std::string("(top level)") : key.substr(0, dot);
}

void print_weights(const TensorStore& store, bool list_tensors, bool groups) {
  std::map<std::string, size_t> dtypes;
  std::map<std::string, std::pair<size_t, double>> by_group;
  double params = 0, bytes = 0;
  for (const std::string& name : store.names()) {
    const TensorInfo& t = store.info(name);
    dtypes[dtype_name(t.dtype)]++;
    const double n = static_cast<double>(t.numel());
    params += n;
    bytes += static_cast<double>(t.nbytes());
    if (groups) {
      auto& g = by_group[group_of(name)];
      g.first++;
      g.second += n;
    }
  }
  std::printf("    weights: %s (%zu file%s)\n", store.path().c_str(), store.files().size(),
              store.files().size() == 1 ? "" : "s");
  std::printf("    tensors: %zu, parameters: %s, %.1f MB, dtypes:", store.size(), human_count(params).c_str(),
              bytes / 1e6);
  for (const auto& [d, n] : dtypes) std::printf(" %s x%zu", d.c_str(), n);
  std::printf("\n");
  if (groups && by_group.size() > 1)
    for (const auto& [g, cn] : by_group)
      std::printf("    group %-28s %6zu tensors  %s parameters\n", g.c_str(), cn.first, human_count(cn.second).c_str());
  for (const auto& [k, v] : store.metadata()) {
    std::string shown = v.size() > 100 ? v.substr(0, 97) + "..." : v;
    for (char& c : shown)
      if (c == '\n') c = ' ';
    std::printf("    metadata %s: %s\n", k.c_str(), shown.c_str());
  }
  if (list_tensors)
    for (const std::string& name : store.names()) {
      const TensorInfo& t = store.info(name);
      std::string shape = "[";
      for (size_t i = 0; i < t.shape.size(); ++i) shape += (i ? "," : "") + std::to_string(t.shape[i]);
      std::printf("      %-70s %-5s %s]\n", name.c_str(), dtype_name(t.dtype), shape.c_str());
    }
}

}  // namespace

void add_info_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("info", "Show what a checkpoint folder or .safetensors file holds");
  auto path = std::make_shared<std::string>();
  auto list = std::make_shared<bool>(false);
  cmd->add_option("path", *path, "Checkpoint folder, .safetensors file or .safetensors.index.json")->required();
  cmd->add_flag("--tensors", *list, "List every tensor with dtype and shape");
  cmd->callback([path, list] {
    Checkpoint ck = Checkpoint::open(*path);
    std::printf("%s: %s, %zu part%s\n", path->c_str(), checkpoint_kind_name(ck.kind()), ck.parts().size(),
                ck.parts().size() == 1 ? "" : "s");
    for (const ModelPart& part : ck.parts()) {
      std::printf("  %s: %s\n", part.name.empty() ? "model" : part.name.c_str(),
                  part.class_name.empty() ? "(class not declared)" : part.class_name.c_str());
      if (!part.config_path.empty()) std::printf("    config: %s\n", part.config_path.c_str());
      if (part.has_weights()) print_weights(*part.weights, *list, ck.kind() == Checkpoint::Kind::SingleFile);
      else std::printf("    no weights\n");
    }
  });
}

}  // namespace iris::cli
