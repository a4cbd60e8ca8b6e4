#include "adapters/style_adapter.h"

#include <cctype>
#include <cmath>
#include <filesystem>

#include <torch/utils.h>

#include "adapters/adapter_streams.h"
#include "adapters/ip_adapter.h"
#include "core/error.h"
#include "core/state_dict.h"
#include "core/tensor_io.h"

namespace fs = std::filesystem;

namespace iris {

namespace nn = torch::nn;

namespace {

constexpr const char* kKind = "style";
constexpr const char* kOwner = "style";
constexpr const char* kEmbeddingKey = "style.embedding";

// Style names become file names (styles/NAME.safetensors): letters, digits, '_', '-', '.'.
void check_style_name(const std::string& name, const std::string& what) {
  bool ok = !name.empty() && name.size() <= 64 && name[0] != '.';
  for (char ch : name) ok = ok && (std::isalnum(static_cast<unsigned char>(ch)) || ch == '_' || ch == '-' || ch == '.');
  if (!ok)
    throw ConfigError(what + ": style name \"" + name +
                      "\" must be 1-64 letters, digits, '_', '-' or '.' (not starting with '.')");
}

}  // namespace

Json StyleAdapterConfig::to_json() const {
  return {{"tokens", tokens}, {"embed_dim", embed_dim}, {"hidden", hidden}, {"cross_dim", cross_dim},
          {"styles", styles}, {"layers", layers},       {"layer_widths", layer_widths}};
}

StyleAdapterConfig StyleAdapterConfig::from_json(const Json& j, const std::string& what) {
  StyleAdapterConfig c;
  c.tokens = json_require_int(j, "tokens", what);
  c.embed_dim = json_require_int(j, "embed_dim", what);
  c.hidden = json_require_int(j, "hidden", what);
  c.cross_dim = json_require_int(j, "cross_dim", what);
  c.styles = json_string_list(j, "styles", what);
  c.layers = json_int_list(j, "layers", what);
  c.layer_widths = json_int_list(j, "layer_widths", what);
  if (c.tokens < 1 || c.embed_dim < 1 || c.hidden < 1 || c.cross_dim < 1)
    throw FormatError(what + ": tokens, embed_dim, hidden and cross_dim must be positive");
  if (c.styles.empty()) throw FormatError(what + ": \"styles\" is empty (a style adapter needs a bank)");
  if (c.layers.empty() || c.layers.size() != c.layer_widths.size())
    throw FormatError(what + ": \"layers\" and \"layer_widths\" must be non-empty and of equal length");
  for (const auto& s : c.styles) check_style_name(s, what);
  return c;
}

StyleProjectionImpl::StyleProjectionImpl(int64_t embed_dim, int64_t hidden, int64_t cross_dim) {
  fc1 = register_module("fc1", nn::Linear(embed_dim, hidden));
  fc2 = register_module("fc2", nn::Linear(hidden, cross_dim));
  norm = register_module("norm", nn::LayerNorm(nn::LayerNormOptions({cross_dim})));
}

at::Tensor StyleProjectionImpl::forward(const at::Tensor& e) { return norm(fc2(at::gelu(fc1(e)))); }

StyleAdapterImpl::StyleAdapterImpl(const StyleAdapterConfig& c) : config_(c) {
  const auto n = static_cast<int64_t>(c.styles.size());
  auto bank_module = register_module("style_bank", std::make_shared<nn::Module>());
  bank = bank_module->register_parameter(
      "embeddings", at::randn({n, c.tokens, c.embed_dim}) / std::sqrt(static_cast<double>(c.embed_dim)));
  style_proj = register_module("style_proj", StyleProjection(c.embed_dim, c.hidden, c.cross_dim));
  auto layers = register_module("layers", nn::ModuleList());
  for (int64_t width : c.layer_widths) {
    auto m = std::make_shared<nn::Module>();
    to_k_style.push_back(m->register_module("to_k_style", nn::Linear(nn::LinearOptions(c.cross_dim, width).bias(false))));
    to_v_style.push_back(m->register_module("to_v_style", nn::Linear(nn::LinearOptions(c.cross_dim, width).bias(false))));
    layers->push_back(m);
  }
}

int StyleAdapterImpl::find_style(const std::string& name) const {
  for (size_t i = 0; i < config_.styles.size(); ++i)
    if (config_.styles[i] == name) return static_cast<int>(i);
  return -1;
}

at::Tensor StyleAdapterImpl::bank_embedding(const std::string& name) const {
  const int i = find_style(name);
  if (i < 0) {
    std::string known;
    for (const auto& s : config_.styles) known += (known.empty() ? "" : ", ") + s;
    throw ConfigError("unknown style \"" + name + "\" (the adapter's bank has: " + known + ")");
  }
  return bank[i];
}

at::Tensor StyleAdapterImpl::style_tokens(const at::Tensor& embeddings) {
  if (embeddings.dim() != 3 || embeddings.size(1) != config_.tokens || embeddings.size(2) != config_.embed_dim)
    throw ShapeError("style embeddings " + shape_string(embeddings.sizes()) + ": expected [B, " +
                     std::to_string(config_.tokens) + ", " + std::to_string(config_.embed_dim) + "]");
  return style_proj->forward(embeddings);
}

StyleAdapter make_style_adapter(UNet2DCondition& unet, const std::vector<std::string>& styles, StyleAdapterConfig c) {
  if (styles.empty()) throw ConfigError("a style adapter needs at least one style");
  for (size_t i = 0; i < styles.size(); ++i) {
    check_style_name(styles[i], "style adapter");
    for (size_t j = 0; j < i; ++j)
      if (styles[j] == styles[i]) throw ConfigError("style adapter: style \"" + styles[i] + "\" is listed twice");
  }
  c.styles = styles;
  c.cross_dim = unet->config().cross_attention_dim;
  c.layers = decoder_cross_attention_layers(unet);
  if (c.layers.empty()) throw ConfigError("style adapter: the UNet has no cross-attention layers in its up blocks");
  c.layer_widths = cross_attention_widths(unet, c.layers);
  StyleAdapter a(c);
  copy_layer_kv(unet, c.layers, a->to_k_style, a->to_v_style);
  a->to(unet->parameters().front().device());
  return a;
}

void save_style_adapter(StyleAdapter& adapter, const std::string& path) {
  save_adapter_file(path, *adapter, kKind, adapter->config().to_json());
}

StyleAdapter load_style_adapter(const std::string& path, UNet2DCondition& unet) {
  const StyleAdapterConfig c = StyleAdapterConfig::from_json(read_adapter_config(path, kKind), path);
  check_adapter_layers(c.layers, c.layer_widths, c.cross_dim, unet, decoder_cross_attention_layers(unet), path);
  StyleAdapter a(c);
  load_adapter_weights(*a, path, unet);
  return a;
}

void save_style(const std::string& path, const StyleFile& style) {
  check_style_name(style.name, path);
  if (!style.embedding.defined() || style.embedding.dim() != 2)
    throw ShapeError(path + ": a style embedding is [tokens, embed_dim]");
  std::map<std::string, std::string> meta = {{"format", "pt"},
                                             {"iris.style", style.name},
                                             {"iris.tokens", std::to_string(style.embedding.size(0))},
                                             {"iris.embed_dim", std::to_string(style.embedding.size(1))}};
  if (!style.description.empty()) meta["description"] = style.description;
  write_safetensors(path, {{kEmbeddingKey, style.embedding.detach().to(at::kCPU, at::kFloat)}}, meta);
}

StyleFile load_style(const std::string& path) {
  SafetensorsFile f(path);
  if (f.tensors().empty()) throw FormatError(path + ": empty style file (no tensors; expected \"" + kEmbeddingKey + "\")");
  for (const TensorInfo& t : f.tensors())
    if (t.name != kEmbeddingKey)
      throw FormatError(path + ": unexpected tensor \"" + t.name + "\" in a style file (only \"" + kEmbeddingKey + "\")");
  StyleFile s;
  s.embedding = read_tensor(f, f.at(kEmbeddingKey)).to(at::kFloat);
  if (s.embedding.dim() != 2 || s.embedding.numel() == 0)
    throw FormatError(path + ": \"" + kEmbeddingKey + "\" is " + shape_string(s.embedding.sizes()) +
                      ", expected [tokens, embed_dim]");
  if (!at::isfinite(s.embedding).all().item<bool>())
    throw FormatError(path + ": \"" + kEmbeddingKey + "\" holds NaN or infinite values");
  const auto& meta = f.metadata();
  auto name = meta.find("iris.style");
  s.name = name != meta.end() ? name->second : fs::path(path).stem().string();
  auto desc = meta.find("description");
  if (desc != meta.end()) s.description = desc->second;
  return s;
}

void export_bank_styles(StyleAdapter& adapter, const std::string& dir) {
  fs::create_directories(dir);
  for (const auto& name : adapter->config().styles)
    save_style((fs::path(dir) / (name + ".safetensors")).string(), {name, adapter->bank_embedding(name), ""});
}

StyleFile resolve_style(StyleAdapter& adapter, const std::string& spec, const std::string& adapter_path) {
  const auto& c = adapter->config();
  StyleFile s;
  const bool is_path = spec.find('/') != std::string::npos || fs::path(spec).extension() == ".safetensors";
  const fs::path beside = fs::path(adapter_path).parent_path() / "styles" / (spec + ".safetensors");
  if (is_path) {
    s = load_style(spec);
  } else if (adapter->find_style(spec) >= 0) {
    s = {spec, adapter->bank_embedding(spec).detach().clone(), ""};
  } else if (!adapter_path.empty() && fs::is_regular_file(beside)) {
    s = load_style(beside.string());
  } else {
    std::string known;
    for (const auto& n : c.styles) known += (known.empty() ? "" : ", ") + n;
    throw ConfigError("unknown style \"" + spec + "\": not in the adapter's bank (" + known + ")" +
                      (adapter_path.empty() ? "" : ", and no " + beside.string()) +
                      "; give a style file path to use another style");
  }
  if (s.embedding.size(0) != c.tokens || s.embedding.size(1) != c.embed_dim)
    throw CheckpointError("style \"" + spec + "\": embedding " + shape_string(s.embedding.sizes()) +
                          ", the style adapter expects [" + std::to_string(c.tokens) + ", " +
                          std::to_string(c.embed_dim) + "]");
  return s;
}

void attach_style(StyleAdapter& adapter, UNet2DCondition& unet, const at::Tensor& tokens, double strength,
                  const std::vector<bool>& rows) {
  if (static_cast<int64_t>(rows.size()) != tokens.size(0))
    throw ShapeError("style: " + std::to_string(rows.size()) + " row flags for " + std::to_string(tokens.size(0)) +
                     " token rows");
  StreamInputs in;
  in.tokens = tokens;
  in.gate = row_gate(rows, tokens.device());
  attach_token_stream(unet, kOwner, adapter->config().layers, adapter->to_k_style, adapter->to_v_style, in,
                      {strength});
}

void detach_style(UNet2DCondition& unet) { detach_streams(unet, kOwner); }

}  // namespace iris
