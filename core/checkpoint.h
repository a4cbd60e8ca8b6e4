#pragma once
// Checkpoint folders and files, as diffusers / transformers lay them out:
//   pipeline folder: model_index.json + <part>/config.json + <part>/<weights>.safetensors
//   model folder:    config.json + model.safetensors (or model.safetensors.index.json + shards)
//   single file:     x.safetensors (e.g. an original LDM Stable Diffusion checkpoint)
#include <memory>
#include <string>
#include <vector>

#include "core/json_util.h"
#include "core/safetensors.h"

namespace iris {

struct ModelPart {
  std::string name;       // "unet", "text_encoder", ... ("" for a lone model folder or file)
  std::string dir;        // folder of the part ("" for a single file)
  std::string class_name; // "UNet2DConditionModel", "LlamaForCausalLM", ... ("" if unknown)
  Json config;            // config.json (or preprocessor/scheduler/tokenizer config), null if none
  std::string config_path;
  std::shared_ptr<TensorStore> weights;  // null for weightless parts (tokenizer, scheduler)
  bool has_weights() const { return weights != nullptr; }
};

class Checkpoint {
 public:
  enum class Kind { Pipeline, ModelFolder, SingleFile };

  // Throws IoError / FormatError / CheckpointError naming the path.
  static Checkpoint open(const std::string& path);

  Kind kind() const { return kind_; }
  const std::string& path() const { return path_; }
  const Json& model_index() const { return model_index_; }  // pipeline only
  const std::vector<ModelPart>& parts() const { return parts_; }
  bool has_part(const std::string& name) const;
  // Throws CheckpointError naming the checkpoint and the parts it has.
  const ModelPart& part(const std::string& name) const;

 private:
  Kind kind_ = Kind::SingleFile;
  std::string path_;
  Json model_index_;
  std::vector<ModelPart> parts_;
};

// The weights file of a model folder: the standard names in order of preference, then a
// sole *.safetensors. Returns "" when the folder has none; throws when only pickled
// (.bin/.ckpt) weights are there, since Iris loads safetensors only.
std::string find_weights_file(const std::string& dir);

const char* checkpoint_kind_name(Checkpoint::Kind k);

}  // namespace iris
