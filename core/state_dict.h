#pragma once
// Loading a module's parameters from a checkpoint through an explicit rename table.
// Modules register parameters under the reference state_dict names, so a diffusers or
// transformers file loads with an empty table; other layouts (LDM single files, the
// original IP-Adapter release) bring a table that maps their names to ours.
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "core/safetensors.h"

namespace torch { namespace nn { class Module; } }

namespace iris {

class RenameTable {
 public:
  // Exact names win over prefixes; among prefixes the longest match wins.
  RenameTable& exact(const std::string& from, const std::string& to);
  RenameTable& prefix(const std::string& from, const std::string& to);
  // Drop source keys with this prefix (e.g. EMA copies, optimizer state).
  RenameTable& ignore(const std::string& prefix);
  // Target name for a source name, or "" when ignored.
  std::string apply(const std::string& name) const;
  bool empty() const { return exact_.empty() && prefixes_.empty() && ignored_.empty(); }
  size_t size() const { return exact_.size() + prefixes_.size(); }

 private:
  std::map<std::string, std::string> exact_;
  std::vector<std::pair<std::string, std::string>> prefixes_;
  std::vector<std::string> ignored_;
};

struct LoadOptions {
  // Only source keys under this prefix are considered, with the prefix removed
  // (e.g. "unet." in a fixture that holds a whole pipeline).
  std::string source_prefix;
  // Strict: any missing, unexpected or mis-shaped key is a CheckpointError.
  bool strict = true;
  // Accept [O, I, 1, 1] conv weights for [O, I] linear ones and the reverse (LDM files store
  // some projections as 1x1 convs where diffusers uses Linear).
  bool reshape_1x1 = false;
  // Target module keys that may stay unloaded (e.g. optional adapters).
  std::function<bool(const std::string&)> allow_missing;
};

struct LoadReport {
  std::vector<std::string> loaded;
  std::vector<std::string> missing;     // in the module, not in the file
  std::vector<std::string> unexpected;  // in the file, not in the module
  std::vector<std::string> mismatched;  // "key: expected [..], found [..]"
  bool ok() const { return missing.empty() && unexpected.empty() && mismatched.empty(); }
  // One readable paragraph naming the keys (at most a few of each kind).
  std::string summary() const;
};

std::string shape_string(at::IntArrayRef shape);

// Copies tensors into the module's parameters and buffers (converted to their dtype and
// device). `what` names the source in errors (file or folder).
LoadReport load_state_dict(torch::nn::Module& module, const TensorStore& store, const RenameTable& renames,
                           const LoadOptions& options = {});

// Same, from tensors already in memory.
LoadReport load_state_dict(torch::nn::Module& module, const std::map<std::string, at::Tensor>& tensors,
                           const RenameTable& renames, const LoadOptions& options, const std::string& what);

}  // namespace iris
