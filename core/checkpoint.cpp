#include "core/checkpoint.h"

#include <algorithm>
#include <filesystem>

#include "core/error.h"

namespace fs = std::filesystem;

namespace iris {

const char* checkpoint_kind_name(Checkpoint::Kind k) {
  switch (k) {
    case Checkpoint::Kind::Pipeline: return "pipeline folder";
    case Checkpoint::Kind::ModelFolder: return "model folder";
    case Checkpoint::Kind::SingleFile: return "single file";
  }
  return "?";
}

std::string find_weights_file(const std::string& dir) {
  static const char* preferred[] = {
      "diffusion_pytorch_model.safetensors", "model.safetensors",
      "diffusion_pytorch_model.safetensors.index.json", "model.safetensors.index.json",
      "diffusion_pytorch_model.fp16.safetensors", "model.fp16.safetensors"};
  for (const char* name : preferred)
    if (fs::is_regular_file(fs::path(dir) / name)) return (fs::path(dir) / name).string();
  std::vector<std::string> safetensors, pickles;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    if (!e.is_regular_file()) continue;
    const std::string ext = e.path().extension().string();
    if (ext == ".safetensors") safetensors.push_back(e.path().string());
    if (ext == ".bin" || ext == ".ckpt" || ext == ".pt" || ext == ".pth") pickles.push_back(e.path().string());
  }
  std::sort(safetensors.begin(), safetensors.end());
  if (safetensors.size() == 1) return safetensors[0];
  if (safetensors.size() > 1)
    throw CheckpointError(dir + ": several .safetensors files and no index (" + safetensors[0] + ", " +
                          safetensors[1] + ", ...): which one is the model?");
  if (!pickles.empty())
    throw CheckpointError(pickles[0] + ": pickled PyTorch weights are not loaded by Iris (they can run code); "
                          "convert them to .safetensors");
  return "";
}

namespace {

ModelPart open_part(const std::string& name, const fs::path& dir) {
  ModelPart part;
  part.name = name;
  part.dir = dir.string();
  for (const char* cfg : {"config.json", "preprocessor_config.json", "scheduler_config.json", "tokenizer_config.json"}) {
    if (fs::is_regular_file(dir / cfg)) {
      part.config_path = (dir / cfg).string();
      part.config = read_json_file(part.config_path);
      break;
    }
  }
  if (part.config.is_object()) {
    if (part.config.contains("_class_name") && part.config["_class_name"].is_string())
      part.class_name = part.config["_class_name"].get<std::string>();
    else if (part.config.contains("architectures") && part.config["architectures"].is_array() &&
             !part.config["architectures"].empty() && part.config["architectures"][0].is_string())
      part.class_name = part.config["architectures"][0].get<std::string>();
  }
  const std::string weights = find_weights_file(part.dir);
  if (!weights.empty()) part.weights = std::make_shared<TensorStore>(TensorStore::open(weights));
  return part;
}

}  // namespace

Checkpoint Checkpoint::open(const std::string& path) {
  Checkpoint ck;
  ck.path_ = path;
  std::error_code ec;
  const fs::path p(path);
  if (!fs::exists(p, ec)) throw IoError(path + ": no such file or folder");
  if (fs::is_regular_file(p)) {
    ck.kind_ = Kind::SingleFile;
    ModelPart part;
    part.weights = std::make_shared<TensorStore>(TensorStore::open(path));
    ck.parts_.push_back(std::move(part));
    return ck;
  }
  if (!fs::is_directory(p)) throw IoError(path + ": neither a file nor a folder");
  if (fs::is_regular_file(p / "model_index.json")) {
    ck.kind_ = Kind::Pipeline;
    const std::string index_path = (p / "model_index.json").string();
    ck.model_index_ = read_json_file(index_path);
    if (!ck.model_index_.is_object()) throw FormatError(index_path + ": expected a JSON object");
    // Entries like "unet": ["diffusers", "UNet2DConditionModel"]; keys starting with '_' are metadata.
    for (auto it = ck.model_index_.begin(); it != ck.model_index_.end(); ++it) {
      if (it.key().empty() || it.key()[0] == '_') continue;
      if (!it.value().is_array() || it.value().size() != 2) continue;  // e.g. "requires_safety_checker": true
      if (it.value()[0].is_null()) continue;                          // component explicitly absent
      if (!fs::is_directory(p / it.key()))
        throw CheckpointError(index_path + ": lists part \"" + it.key() + "\" but " + (p / it.key()).string() +
                              " is not a folder");
      ModelPart part = open_part(it.key(), p / it.key());
      if (it.value()[1].is_string()) part.class_name = it.value()[1].get<std::string>();
      ck.parts_.push_back(std::move(part));
    }
    return ck;
  }
  ck.kind_ = Kind::ModelFolder;
  ModelPart part = open_part("", p);
  if (!part.has_weights() && part.config.is_null())
    throw CheckpointError(path + ": not a checkpoint folder (no model_index.json, config.json or .safetensors)");
  ck.parts_.push_back(std::move(part));
  return ck;
}

bool Checkpoint::has_part(const std::string& name) const {
  return std::any_of(parts_.begin(), parts_.end(), [&](const ModelPart& p) { return p.name == name; });
}

const ModelPart& Checkpoint::part(const std::string& name) const {
  for (const ModelPart& p : parts_)
    if (p.name == name) return p;
  std::string have;
  for (const ModelPart& p : parts_) have += (have.empty() ? "" : ", ") + (p.name.empty() ? "(model)" : p.name);
  throw CheckpointError(path_ + ": no part \"" + name + "\" (it has: " + (have.empty() ? "nothing" : have) + ")");
}

}  // namespace iris
