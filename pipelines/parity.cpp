#include "pipelines/parity.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>

#include "core/error.h"
#include "core/tensor_io.h"
#include "pipelines/sd_model.h"

namespace iris {

std::string Fixture::dir() const { return std::filesystem::path(path).parent_path().string(); }

at::Tensor Fixture::tensor(const std::string& name) const {
  if (!store) throw CheckpointError(path + ": holds no tensors");
  if (!store->contains(name)) throw CheckpointError(path + ": fixture has no tensor \"" + name + "\"");
  return read_tensor(*store, name);
}

Fixture open_fixture(const std::string& path) {
  Fixture fx;
  fx.path = path;
  namespace fs = std::filesystem;
  const fs::path p(path);
  fs::path sidecar = p;
  sidecar.replace_extension(".json");
  if (p.extension() == ".safetensors") {
    fx.store = std::make_shared<TensorStore>(TensorStore::open(path));
    const auto& md = fx.store->metadata();
    if (auto it = md.find("class"); it != md.end()) fx.cls = it->second;
    else if (auto pit = md.find("pipeline"); pit != md.end()) fx.cls = pit->second;  // pipeline fixtures
    if (auto it = md.find("config"); it != md.end()) {
      // Model fixtures store JSON; the pipeline fixture stores a Python dict repr.
      fx.config = it->second.rfind("{'", 0) == 0 ? python_literal_to_json(it->second, path + ": metadata \"config\"")
                                                 : parse_json(it->second, path + ": metadata \"config\"");
    }
    if (fs::is_regular_file(sidecar)) fx.sidecar = read_json_file(sidecar.string());
    return fx;
  }
  if (p.extension() == ".jsonl") {
    if (!fs::is_regular_file(sidecar)) throw IoError(path + ": golden table without its sidecar " + sidecar.string());
    fx.sidecar = read_json_file(sidecar.string());
    // Tables name their reference in the sidecar: openai/CLIP's tokenizer or sentencepiece.
    const Json& ref = fx.sidecar.value("reference", Json::object());
    if (ref.value("repo", "") == "openai/CLIP") fx.cls = "clip.simple_tokenizer";
    else if (ref.value("library", "").find("sentencepiece") != std::string::npos) fx.cls = "sentencepiece";
    else throw FormatError(sidecar.string() + ": unknown golden table reference " + ref.dump());
    return fx;
  }
  if (!fs::exists(p)) throw IoError(path + ": no such file");
  throw FormatError(path + ": not a fixture (expected .safetensors or .jsonl)");
}

void report_outputs(const Fixture& fx, std::vector<ParityLine>& lines,
                    const std::function<std::optional<ParityLine>(const std::string& key)>& line_for) {
  for (const std::string& name : fx.store->names()) {
    if (name.rfind("output.", 0) != 0) continue;
    const std::string key = name.substr(7);
    std::optional<ParityLine> line = line_for(key);
    if (!line) {
      line = ParityLine{};
      line->name = key;
      line->detail = "not produced by Iris";
    }
    lines.push_back(*line);
  }
}

ParityLine compare(const std::string& name, const at::Tensor& got_in, const at::Tensor& want_in, double atol) {
  ParityLine line;
  line.name = name;
  at::Tensor got = got_in.detach().to(at::kCPU);
  at::Tensor want = want_in.detach().to(at::kCPU);
  if (got.sizes() != want.sizes()) {
    line.detail = "shape " + std::string(c10::str(got.sizes())) + " vs expected " + std::string(c10::str(want.sizes()));
    return line;
  }
  if (!at::isFloatingType(want.scalar_type())) {
    const int64_t differ = got.to(at::kLong).ne(want.to(at::kLong)).sum().item<int64_t>();
    line.max_abs = want.numel() ? (got.to(at::kDouble) - want.to(at::kDouble)).abs().max().item<double>() : 0;
    line.pass = differ == 0;
    line.detail = std::to_string(want.numel() - differ) + "/" + std::to_string(want.numel()) + " equal";
    return line;
  }
  at::Tensor g = got.to(at::kDouble), w = want.to(at::kDouble);
  if (!g.isfinite().all().item<bool>()) {
    line.detail = "non-finite values";
    line.max_abs = INFINITY;
    return line;
  }
  const double scale = w.numel() ? w.abs().max().item<double>() : 0.0;
  line.max_abs = w.numel() ? (g - w).abs().max().item<double>() : 0.0;
  line.max_rel = line.max_abs / std::max(scale, 1e-12);
  line.pass = line.max_abs <= atol * std::max(1.0, scale);
  return line;
}

const ParityRunner* ParityRegistry::find(const std::string& cls) const {
  auto it = runners_.find(cls);
  return it == runners_.end() ? nullptr : &it->second;
}

std::vector<std::string> ParityRegistry::classes() const {
  std::vector<std::string> out;
  for (const auto& kv : runners_) out.push_back(kv.first);
  return out;
}

const ParityRegistry& parity_registry() {
  static const ParityRegistry registry = [] {
    ParityRegistry r;
    register_core_parity(r);
    register_scheduler_parity(r);
    register_clip_parity(r);
    register_unet_vae_parity(r);
    register_vlm_parity(r);
    register_pipeline_parity(r);
    register_adapter_parity(r);
    return r;
  }();
  return registry;
}

bool ParityOutcome::passed() const {
  return class_supported && !lines.empty() &&
         std::all_of(lines.begin(), lines.end(), [](const ParityLine& l) { return l.pass; });
}

namespace {

// Reads every tensor as stored, writes a new file image with the same metadata, parses it
// again and checks every byte of every tensor.
ParityLine safetensors_roundtrip(const Fixture& fx) {
  ParityLine line;
  line.name = "safetensors.roundtrip";
  SafetensorsWriter w;
  for (const auto& kv : fx.store->metadata()) w.set_metadata(kv.first, kv.second);
  size_t count = 0;
  for (const std::string& name : fx.store->names()) {
    const TensorInfo& t = fx.store->info(name);
    w.add(name, t.dtype, t.shape, fx.store->file_of(name).data(t), t.nbytes());
    ++count;
  }
  const std::vector<uint8_t> bytes = w.serialize();
  const SafetensorsHeader again = parse_safetensors(bytes.data(), bytes.size(), "round trip of " + fx.path);
  size_t equal = 0;
  for (const TensorInfo& t : again.tensors) {
    const TensorInfo& orig = fx.store->info(t.name);
    if (t.dtype == orig.dtype && t.shape == orig.shape && t.nbytes() == orig.nbytes() &&
        std::memcmp(bytes.data() + again.data_start + t.begin, fx.store->file_of(t.name).data(orig), t.nbytes()) == 0)
      ++equal;
  }
  const bool meta_equal = again.metadata == fx.store->metadata();
  line.pass = equal == count && again.tensors.size() == count && meta_equal;
  line.detail = std::to_string(equal) + "/" + std::to_string(count) + " tensors bit-exact" +
                (meta_equal ? ", metadata equal" : ", METADATA DIFFERS");
  return line;
}

}  // namespace

ParityOutcome run_parity(const std::string& path, bool roundtrip_only) {
  Fixture fx = open_fixture(path);
  ParityOutcome out;
  out.cls = fx.cls;
  if (fx.store) out.lines.push_back(safetensors_roundtrip(fx));
  if (roundtrip_only) {
    out.class_supported = true;
    return out;
  }
  const ParityRunner* runner = parity_registry().find(fx.cls);
  if (!runner) return out;
  out.class_supported = true;
  (*runner)(fx, out.lines);
  return out;
}

}  // namespace iris
