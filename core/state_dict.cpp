#include "core/state_dict.h"

#include <set>
#include <sstream>

#include <torch/nn/module.h>
#include <torch/utils.h>

#include "core/error.h"
#include "core/tensor_io.h"

namespace iris {

RenameTable& RenameTable::exact(const std::string& from, const std::string& to) {
  exact_[from] = to;
  return *this;
}

RenameTable& RenameTable::prefix(const std::string& from, const std::string& to) {
  prefixes_.emplace_back(from, to);
  return *this;
}

RenameTable& RenameTable::ignore(const std::string& prefix) {
  ignored_.push_back(prefix);
  return *this;
}

std::string RenameTable::apply(const std::string& name) const {
  for (const std::string& p : ignored_)
    if (name.compare(0, p.size(), p) == 0) return "";
  auto it = exact_.find(name);
  if (it != exact_.end()) return it->second;
  const std::pair<std::string, std::string>* best = nullptr;
  for (const auto& rule : prefixes_)
    if (name.compare(0, rule.first.size(), rule.first) == 0 && (!best || rule.first.size() > best->first.size()))
      best = &rule;
  if (best) return best->second + name.substr(best->first.size());
  return name;
}

std::string shape_string(at::IntArrayRef shape) {
  std::ostringstream s;
  s << '[';
  for (size_t i = 0; i < shape.size(); ++i) s << (i ? "," : "") << shape[i];
  s << ']';
  return s.str();
}

std::string LoadReport::summary() const {
  std::ostringstream s;
  auto list = [&](const char* label, const std::vector<std::string>& keys) {
    if (keys.empty()) return;
    if (s.tellp() > 0) s << "; ";
    s << keys.size() << ' ' << label << ": ";
    for (size_t i = 0; i < keys.size() && i < 5; ++i) s << (i ? ", " : "") << keys[i];
    if (keys.size() > 5) s << ", ... (" << keys.size() - 5 << " more)";
  };
  list("mismatched shapes", mismatched);
  list("missing keys", missing);
  list("unexpected keys", unexpected);
  if (s.tellp() == 0) s << loaded.size() << " tensors loaded";
  return s.str();
}

namespace {

// Maps target names to source tensors, then copies them into the module. `done(name)` is
// called once a source tensor has been copied (the file-backed overload drops its pages).
template <typename Fetch, typename Done>
LoadReport load_impl(torch::nn::Module& module, const std::vector<std::string>& source_names, Fetch fetch, Done done,
                     const RenameTable& renames, const LoadOptions& options, const std::string& what) {
  std::map<std::string, at::Tensor> targets;
  for (auto& p : module.named_parameters(/*recurse=*/true)) targets.emplace(p.key(), p.value());
  for (auto& b : module.named_buffers(/*recurse=*/true)) targets.emplace(b.key(), b.value());

  LoadReport report;
  std::map<std::string, std::string> target_to_source;
  const std::string& sp = options.source_prefix;
  for (const std::string& src : source_names) {
    if (!sp.empty() && src.compare(0, sp.size(), sp) != 0) continue;
    const std::string mapped = renames.apply(src.substr(sp.size()));
    if (mapped.empty()) continue;  // ignored by the table
    if (!targets.count(mapped)) {
      report.unexpected.push_back(src);
      continue;
    }
    auto [it, inserted] = target_to_source.emplace(mapped, src);
    if (!inserted)
      throw CheckpointError(join_context(what, "keys \"" + it->second + "\" and \"" + src + "\" both map to \"" + mapped + "\""));
  }

  torch::NoGradGuard no_grad;
  for (auto& [name, param] : targets) {
    auto src = target_to_source.find(name);
    if (src == target_to_source.end()) {
      if (!options.allow_missing || !options.allow_missing(name)) report.missing.push_back(name);
      continue;
    }
    at::Tensor value = fetch(src->second);
    if (options.reshape_1x1 && value.numel() == param.numel() && value.dim() + param.dim() == 6 &&
        value.size(0) == param.size(0) && value.size(1) == param.size(1))
      value = value.reshape(param.sizes());  // [O, I, 1, 1] <-> [O, I]
    if (value.sizes() != param.sizes()) {
      report.mismatched.push_back("key " + src->second + ": expected " + shape_string(param.sizes()) + ", found " +
                                  shape_string(value.sizes()));
      continue;
    }
    // copy_ converts dtype and device on the way, with no converted temporary of the tensor.
    param.copy_(value);
    value = at::Tensor();
    done(src->second);
    report.loaded.push_back(name);
  }
  if (options.strict && !report.ok()) throw CheckpointError(join_context(what, report.summary()));
  return report;
}

}  // namespace

LoadReport load_state_dict(torch::nn::Module& module, const TensorStore& store, const RenameTable& renames,
                           const LoadOptions& options) {
  // Tensors are read straight from the mapping when their bytes are aligned for their dtype
  // (a view, no copy; the store outlives it), and each one's pages leave the resident set once
  // it is in the module, so loading never holds the file and the model in memory together.
  auto fetch = [&](const std::string& n) {
    const SafetensorsFile& f = store.file_of(n);
    const TensorInfo& t = store.info(n);
    const at::ScalarType st = scalar_type_of(t.dtype);
    const uint8_t* p = f.data(t);
    if (t.nbytes() > 0 && reinterpret_cast<uintptr_t>(p) % c10::elementSize(st) == 0)
      return at::from_blob(const_cast<uint8_t*>(p), t.shape, at::TensorOptions().dtype(st));
    return read_tensor(store, n);
  };
  auto done = [&](const std::string& n) { store.file_of(n).drop_pages(store.info(n)); };
  return load_impl(module, store.names(), fetch, done, renames, options, store.path());
}

LoadReport load_state_dict(torch::nn::Module& module, const std::map<std::string, at::Tensor>& tensors,
                           const RenameTable& renames, const LoadOptions& options, const std::string& what) {
  std::vector<std::string> names;
  for (const auto& kv : tensors) names.push_back(kv.first);
  return load_impl(
      module, names, [&](const std::string& n) { return tensors.at(n); }, [](const std::string&) {}, renames, options,
      what);
}

}  // namespace iris
