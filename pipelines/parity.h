#pragma once
// `iris parity`: checks Iris against the golden outputs of the reference implementations
// (../shared/fixtures). A fixture names its reference class in its metadata; a runner for
// that class rebuilds the model, feeds the stored inputs and compares every output it can
// produce. Every .safetensors fixture also gets a bit-exact read/write round trip.
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "core/json_util.h"
#include "core/safetensors.h"

namespace iris {

struct ParityLine {
  std::string name;
  double max_abs = 0;
  double max_rel = 0;
  bool pass = false;
  std::string detail;  // for non-numeric checks ("201/201 rows equal")
};

// One fixture on disk: a .safetensors with metadata, or a .jsonl golden table + sidecar .json.
struct Fixture {
  std::string path;
  std::string cls;      // reference class from metadata ("diffusers.UNet2DConditionModel", ...)
  Json config;          // the model config from metadata (null if none)
  Json sidecar;         // the .json next to the fixture (null if none)
  std::shared_ptr<TensorStore> store;  // null for .jsonl tables
  std::string dir() const;
  // `input.X` / `output.X` / parameter tensors; throws CheckpointError naming the fixture.
  at::Tensor tensor(const std::string& name) const;
  bool has(const std::string& name) const { return store && store->contains(name); }
};

Fixture open_fixture(const std::string& path);

// Compares with the contract's tolerance: max |got - want| <= atol * max(1, max |want|).
// Integer tensors must be equal.
ParityLine compare(const std::string& name, const at::Tensor& got, const at::Tensor& want, double atol = 1e-4);

// One line per "output.<key>" tensor of the fixture, in the fixture's order: line_for(key), or
// a failing "not produced by Iris" line when it has none (an output Iris skipped must fail).
void report_outputs(const Fixture& fx, std::vector<ParityLine>& lines,
                    const std::function<std::optional<ParityLine>(const std::string& key)>& line_for);

using ParityRunner = std::function<void(const Fixture&, std::vector<ParityLine>&)>;

class ParityRegistry {
 public:
  void add(const std::string& cls, ParityRunner runner) { runners_[cls] = std::move(runner); }
  const ParityRunner* find(const std::string& cls) const;
  std::vector<std::string> classes() const;

 private:
  std::map<std::string, ParityRunner> runners_;
};

// All runners this build knows (each library registers its own classes).
const ParityRegistry& parity_registry();

struct ParityOutcome {
  std::string cls;
  std::vector<ParityLine> lines;
  bool class_supported = false;  // a runner existed for the class
  bool passed() const;
};

// Runs the round trip (for .safetensors) and the class runner. With roundtrip_only the
// class runner is skipped.
ParityOutcome run_parity(const std::string& path, bool roundtrip_only = false);

// Registration functions, one per family of reference classes (pipelines/parity_*.cpp).
void register_core_parity(ParityRegistry& r);        // tokenizers, CLIP image processor
void register_scheduler_parity(ParityRegistry& r);   // diffusers schedulers
void register_clip_parity(ParityRegistry& r);        // CLIP text / vision models
void register_unet_vae_parity(ParityRegistry& r);    // UNet2DConditionModel, AutoencoderKL
void register_vlm_parity(ParityRegistry& r);         // LLaMA, LLaVA
void register_pipeline_parity(ParityRegistry& r);    // StableDiffusionPipeline
void register_adapter_parity(ParityRegistry& r);     // IP-Adapter (base in the UNet, Plus resampler)

}  // namespace iris
