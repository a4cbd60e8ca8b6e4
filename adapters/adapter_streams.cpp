#include "adapters/adapter_streams.h"

#include <algorithm>

#include <torch/utils.h>

#include "adapters/ip_adapter.h"
#include "core/error.h"
#include "core/state_dict.h"
#include "core/tensor_io.h"

namespace iris {

namespace nn = torch::nn;

std::vector<int64_t> decoder_cross_attention_layers(UNet2DCondition& unet) {
  std::vector<int64_t> out;
  const auto layers = unet->cross_attention_layers();
  for (size_t i = 0; i < layers.size(); ++i)
    if (layers[i].first.rfind("up_blocks.", 0) == 0) out.push_back(static_cast<int64_t>(i));
  return out;
}

std::vector<int64_t> all_cross_attention_layers(UNet2DCondition& unet) {
  std::vector<int64_t> out(unet->cross_attention_layers().size());
  for (size_t i = 0; i < out.size(); ++i) out[i] = static_cast<int64_t>(i);
  return out;
}

std::vector<int64_t> cross_attention_widths(UNet2DCondition& unet, const std::vector<int64_t>& layers) {
  const auto all = unet->cross_attention_layers();
  std::vector<int64_t> out;
  for (int64_t i : layers) out.push_back(all.at(static_cast<size_t>(i)).second->to_q->weight.size(0));
  return out;
}

void copy_layer_kv(UNet2DCondition& unet, const std::vector<int64_t>& layers, const std::vector<nn::Linear>& to_k,
                   const std::vector<nn::Linear>& to_v) {
  const auto all = unet->cross_attention_layers();
  if (to_k.size() != layers.size() || to_v.size() != layers.size())
    throw ConfigError("copy_layer_kv: " + std::to_string(to_k.size()) + " projections for " +
                      std::to_string(layers.size()) + " layers");
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < layers.size(); ++i) {
    const Attention& layer = all.at(static_cast<size_t>(layers[i])).second;
    to_k[i]->weight.copy_(layer->to_k->weight);
    to_v[i]->weight.copy_(layer->to_v->weight);
  }
}

at::Tensor row_gate(const std::vector<bool>& on, const c10::Device& device) {
  if (std::all_of(on.begin(), on.end(), [](bool b) { return b; })) return {};  // nothing to switch off
  std::vector<float> v(on.begin(), on.end());
  return at::tensor(v, at::kFloat).view({static_cast<int64_t>(v.size()), 1, 1, 1}).to(device);
}

std::vector<bool> cfg_rows(int batch, bool guided) {
  std::vector<bool> rows;
  if (guided) rows.assign(static_cast<size_t>(batch), false);
  rows.insert(rows.end(), static_cast<size_t>(batch), true);
  return rows;
}

void attach_token_stream(UNet2DCondition& unet, const std::string& owner, const std::vector<int64_t>& layers,
                         const std::vector<nn::Linear>& to_k, const std::vector<nn::Linear>& to_v,
                         const StreamInputs& in, const std::vector<double>& scales) {
  auto all = unet->cross_attention_layers();
  if (to_k.size() != layers.size() || to_v.size() != layers.size())
    throw ConfigError(owner + ": " + std::to_string(to_k.size()) + " K/V projections for " +
                      std::to_string(layers.size()) + " layers");
  if (scales.size() != 1 && scales.size() != layers.size())
    throw ConfigError(owner + ": " + std::to_string(scales.size()) + " per-layer scales for " +
                      std::to_string(layers.size()) + " layers");
  if (in.key_mask.defined() && (in.key_mask.dim() != 2 || in.key_mask.size(0) != in.tokens.size(0) ||
                                in.key_mask.size(1) != in.tokens.size(1)))
    throw ShapeError(owner + ": key mask " + shape_string(in.key_mask.sizes()) + " does not fit tokens " +
                     shape_string(in.tokens.sizes()));
  detach_streams(unet, owner);
  for (size_t i = 0; i < layers.size(); ++i) {
    const auto li = static_cast<size_t>(layers[i]);
    if (li >= all.size())
      throw ConfigError(owner + ": layer " + std::to_string(li) + " is not an attn2 layer of this UNet (" +
                        std::to_string(all.size()) + " layers)");
    auto s = std::make_shared<AttentionStream>();
    s->owner = owner;
    s->to_k = to_k[i];
    s->to_v = to_v[i];
    s->tokens = in.tokens;
    s->scale = scales.size() == 1 ? scales[0] : scales[i];
    s->mask = in.gate;
    s->key_mask = in.key_mask;
    all[li].second->streams.push_back(s);
  }
}

void save_adapter_file(const std::string& path, nn::Module& module, const std::string& kind, const Json& config,
                       const std::map<std::string, std::string>& extra_metadata) {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& kv : module.named_parameters(true)) out.emplace_back(kv.key(), kv.value().detach());
  std::map<std::string, std::string> meta = extra_metadata;
  meta["format"] = "pt";
  meta["iris.adapter"] = kind;
  meta["iris.config"] = config.dump();
  write_safetensors(path, out, meta);
}

Json read_adapter_config(const std::string& path, const std::string& kind) {
  SafetensorsFile f(path);
  const auto& meta = f.metadata();
  auto k = meta.find("iris.adapter");
  if (k == meta.end())
    throw FormatError(path + ": not an Iris adapter file (no \"iris.adapter\" metadata; expected a " + kind +
                      " adapter)");
  if (k->second != kind) throw FormatError(path + ": is a " + k->second + " adapter, expected a " + kind + " adapter");
  auto c = meta.find("iris.config");
  if (c == meta.end()) throw FormatError(path + ": metadata \"iris.config\" is missing");
  Json j = parse_json(c->second, path + ": metadata \"iris.config\"");
  if (!j.is_object()) throw FormatError(path + ": metadata \"iris.config\" is not a JSON object");
  return j;
}

void load_adapter_weights(nn::Module& module, const std::string& path, UNet2DCondition& unet) {
  TensorStore store = TensorStore::open(path);
  LoadOptions o;
  o.strict = true;
  const LoadReport r = load_state_dict(module, store, RenameTable(), o);
  if (!r.ok()) throw CheckpointError(path + ": " + r.summary());  // strict loading normally throws already
  module.eval();
  module.to(unet->parameters().front().device());
}

namespace {

const Json& json_array(const Json& j, const std::string& key, const std::string& what) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_array()) throw FormatError(what + ": \"" + key + "\" is missing or not an array");
  return *it;
}

}  // namespace

std::vector<int64_t> json_int_list(const Json& j, const std::string& key, const std::string& what) {
  std::vector<int64_t> out;
  for (const Json& v : json_array(j, key, what)) {
    if (!v.is_number_integer()) throw FormatError(what + ": \"" + key + "\": " + v.dump() + " is not an integer");
    out.push_back(v.get<int64_t>());
  }
  return out;
}

std::vector<std::string> json_string_list(const Json& j, const std::string& key, const std::string& what) {
  std::vector<std::string> out;
  for (const Json& v : json_array(j, key, what)) {
    if (!v.is_string()) throw FormatError(what + ": \"" + key + "\": " + v.dump() + " is not a string");
    out.push_back(v.get<std::string>());
  }
  return out;
}

void check_adapter_layers(const std::vector<int64_t>& layers, const std::vector<int64_t>& widths, int64_t cross_dim,
                          UNet2DCondition& unet, const std::vector<int64_t>& expected, const std::string& what) {
  if (cross_dim != unet->config().cross_attention_dim)
    throw CheckpointError(what + ": made for cross_attention_dim " + std::to_string(cross_dim) + ", the UNet has " +
                          std::to_string(unet->config().cross_attention_dim));
  if (layers != expected)
    throw CheckpointError(what + ": made for attn2 layers " + shape_string(layers) + ", this UNet's are " +
                          shape_string(expected));
  const std::vector<int64_t> have = cross_attention_widths(unet, layers);
  if (widths != have)
    throw CheckpointError(what + ": made for attn2 layer widths " + shape_string(widths) + ", the UNet's are " +
                          shape_string(have));
}

}  // namespace iris
