#include "adapters/ip_adapter.h"

#include <cmath>
#include <regex>

#include "core/attention.h"
#include "core/error.h"
#include "core/state_dict.h"
#include "core/tensor_io.h"

namespace iris {

namespace nn = torch::nn;

IpImageProjectionImpl::IpImageProjectionImpl(int64_t image_dim, int64_t t, int64_t c) : tokens(t), cross_dim(c) {
  image_embeds = register_module("image_embeds", nn::Linear(image_dim, t * c));
  norm = register_module("norm", nn::LayerNorm(nn::LayerNormOptions({c})));
}

at::Tensor IpImageProjectionImpl::forward(const at::Tensor& x) {
  return norm(image_embeds(x).reshape({x.size(0), tokens, cross_dim}));
}

IpResamplerImpl::IpResamplerImpl(int64_t embed_dim, int64_t hidden, int64_t output_dim, int64_t depth,
                                 int64_t dim_head, int64_t heads, int64_t num_queries, int64_t ffn_ratio)
    : heads(heads), dim_head(dim_head) {
  latents = register_parameter("latents", at::randn({1, num_queries, hidden}) / std::sqrt(double(hidden)));
  proj_in = register_module("proj_in", nn::Linear(embed_dim, hidden));
  proj_out = register_module("proj_out", nn::Linear(hidden, output_dim));
  norm_out = register_module("norm_out", nn::LayerNorm(nn::LayerNormOptions({output_dim})));
  auto layers = register_module("layers", nn::ModuleList());
  const int64_t inner = heads * dim_head;
  auto lin = [](int64_t i, int64_t o) { return nn::Linear(nn::LinearOptions(i, o).bias(false)); };
  for (int64_t j = 0; j < depth; ++j) {
    Block b;
    auto m = std::make_shared<nn::Module>();
    b.ln0 = m->register_module("ln0", nn::LayerNorm(nn::LayerNormOptions({hidden})));
    b.ln1 = m->register_module("ln1", nn::LayerNorm(nn::LayerNormOptions({hidden})));
    auto attn = m->register_module("attn", std::make_shared<nn::Module>());
    b.to_q = attn->register_module("to_q", lin(hidden, inner));
    b.to_k = attn->register_module("to_k", lin(hidden, inner));
    b.to_v = attn->register_module("to_v", lin(hidden, inner));
    b.to_out = lin(inner, hidden);
    attn->register_module("to_out", nn::ModuleList(b.to_out));
    // ff = Sequential(LayerNorm, FeedForward(gelu)): ff.0, ff.1.net.0.proj, ff.1.net.2
    auto ff = m->register_module("ff", nn::ModuleList());
    b.ff_norm = nn::LayerNorm(nn::LayerNormOptions({hidden}));
    auto feed = std::make_shared<nn::Module>();
    auto net = feed->register_module("net", nn::ModuleList());
    auto gelu = std::make_shared<nn::Module>();
    b.ff_in = gelu->register_module("proj", lin(hidden, hidden * ffn_ratio));
    b.ff_out = lin(hidden * ffn_ratio, hidden);
    net->push_back(gelu);
    net->push_back(nn::Identity());
    net->push_back(b.ff_out);
    ff->push_back(b.ff_norm);
    ff->push_back(feed);
    layers->push_back(m);
    blocks.push_back(b);
  }
}

at::Tensor IpResamplerImpl::forward(const at::Tensor& hidden_states) {
  const int64_t B = hidden_states.size(0);
  at::Tensor x = proj_in(hidden_states);                   // [B, L, hidden]
  at::Tensor lat = latents.expand({B, -1, -1});            // [B, Q, hidden]
  auto heads_of = [&](const at::Tensor& t) { return t.view({B, t.size(1), heads, dim_head}).transpose(1, 2); };
  inter.clear();
  for (Block& b : blocks) {
    at::Tensor residual = lat;
    at::Tensor kv_in = at::cat({b.ln0(x), b.ln1(lat)}, 1);  // keys see the image and the latents
    at::Tensor q_in = b.ln1(lat);
    at::Tensor o = attention(heads_of(b.to_q(q_in)), heads_of(b.to_k(kv_in)), heads_of(b.to_v(kv_in)));
    lat = b.to_out(o.transpose(1, 2).reshape({B, -1, heads * dim_head})) + residual;
    lat = b.ff_out(at::gelu(b.ff_in(b.ff_norm(lat)))) + lat;
    inter.push_back(lat);
  }
  return norm_out(proj_out(lat));
}

IpAdapterImpl::IpAdapterImpl(const IpAdapterConfig& c) : config_(c) {
  if (c.variant == IpVariant::Base)
    base_proj = register_module("image_proj", IpImageProjection(c.image_dim, c.tokens, c.cross_dim));
  else
    plus_proj = register_module("image_proj", IpResampler(c.image_dim, c.hidden, c.cross_dim, c.depth, c.dim_head,
                                                          c.heads, c.tokens, c.ffn_ratio));
  auto layers = register_module("layers", nn::ModuleList());
  for (int64_t d : c.layer_dims) {
    auto m = std::make_shared<nn::Module>();
    to_k_ip.push_back(m->register_module("to_k_ip", nn::Linear(nn::LinearOptions(c.cross_dim, d).bias(false))));
    to_v_ip.push_back(m->register_module("to_v_ip", nn::Linear(nn::LinearOptions(c.cross_dim, d).bias(false))));
    layers->push_back(m);
  }
}

at::Tensor IpAdapterImpl::image_tokens(const at::Tensor& image_input) {
  return base_proj ? base_proj->forward(image_input) : plus_proj->forward(image_input);
}

namespace {

bool starts_with(const std::string& s, const std::string& p) { return s.compare(0, p.size(), p) == 0; }

const at::Tensor& need(const std::map<std::string, at::Tensor>& t, const std::string& key, const std::string& what) {
  auto it = t.find(key);
  if (it == t.end()) throw CheckpointError(what + ": IP-Adapter key \"" + key + "\" is missing");
  return it->second;
}

}  // namespace

IpAdapter load_ip_adapter(const std::map<std::string, at::Tensor>& all, UNet2DCondition& unet,
                          const std::string& prefix, const std::string& what) {
  const auto layers = unet->cross_attention_layers();
  // Bring both layouts to canonical names; to_kv (original Plus) is split here, the rest is renaming.
  std::map<std::string, at::Tensor> t;
  const std::string diff_proj = prefix + "encoder_hid_proj.image_projection_layers.0.";
  const std::string orig_proj = prefix + "image_proj.";
  bool original = false, diffusers = false;
  static const std::regex orig_layer(R"(ip_adapter\.(\d+)\.(to_[kv]_ip)\.weight)");
  static const std::regex plus_orig(R"(layers\.(\d+)\.(0|1)\.(.*))");
  std::map<std::string, size_t> layer_index;
  for (size_t i = 0; i < layers.size(); ++i) layer_index[layers[i].first] = i;
  for (const auto& [key, value] : all) {
    if (!starts_with(key, prefix)) continue;
    const std::string k = key.substr(prefix.size());
    std::smatch m;
    if (starts_with(key, diff_proj)) {
      diffusers = true;
      t["image_proj." + key.substr(diff_proj.size())] = value;
    } else if (std::regex_match(k, m, orig_layer)) {
      original = true;
      const long slot = std::stol(m[1]);
      if (slot % 2 != 1 || static_cast<size_t>(slot / 2) >= layers.size())
        throw CheckpointError(what + ": " + key + ": slot " + m[1].str() + " is not a cross-attention layer of this UNet (" +
                              std::to_string(layers.size()) + " layers: odd slots 1.." + std::to_string(2 * layers.size() - 1) + ")");
      t["layers." + std::to_string(slot / 2) + "." + m[2].str() + ".weight"] = value;
    } else if (starts_with(key, orig_proj)) {
      original = true;
      std::string rest = key.substr(orig_proj.size());
      if (starts_with(rest, "proj.")) rest = "image_embeds." + rest.substr(5);
      std::smatch pm;
      if (std::regex_match(rest, pm, plus_orig)) {
        const std::string j = pm[1], part = pm[2], tail = pm[3];
        const std::string base = "layers." + j + ".";
        if (part == "0") {
          if (starts_with(tail, "norm1.")) rest = base + "ln0." + tail.substr(6);
          else if (starts_with(tail, "norm2.")) rest = base + "ln1." + tail.substr(6);
          else if (tail == "to_q.weight") rest = base + "attn.to_q.weight";
          else if (tail == "to_out.weight") rest = base + "attn.to_out.0.weight";
          else if (tail == "to_kv.weight") {
            auto kv = value.chunk(2, 0);
            t["image_proj." + base + "attn.to_k.weight"] = kv[0];
            t["image_proj." + base + "attn.to_v.weight"] = kv[1];
            continue;
          }
        } else {
          if (starts_with(tail, "0.")) rest = base + "ff.0." + tail.substr(2);
          else if (starts_with(tail, "1.")) rest = base + "ff.1.net.0.proj." + tail.substr(2);
          else if (starts_with(tail, "3.")) rest = base + "ff.1.net.2." + tail.substr(2);
        }
      }
      t["image_proj." + rest] = value;
    } else {
      // diffusers per-layer weights inside the UNet: "<attn2 path>.processor.to_k_ip.0.weight"
      const auto pos = k.find(".processor.to_");
      if (pos == std::string::npos) continue;
      const std::string path = k.substr(0, pos);
      const std::string rest = k.substr(pos + std::string(".processor.").size());  // to_k_ip.0.weight
      auto li = layer_index.find(path);
      if (li == layer_index.end()) throw CheckpointError(what + ": " + key + ": no such cross-attention layer in this UNet");
      if (rest.find("_ip.0.") == std::string::npos)
        throw CheckpointError(what + ": " + key + ": only one IP-Adapter per file is supported");
      diffusers = true;
      t["layers." + std::to_string(li->second) + "." + rest.substr(0, 7) + ".weight"] = value;
    }
  }
  if (!original && !diffusers) throw CheckpointError(what + ": no IP-Adapter weights found");
  if (original && diffusers) throw CheckpointError(what + ": mixes the original and the diffusers IP-Adapter layouts");

  IpAdapterConfig c;
  c.cross_dim = unet->config().cross_attention_dim;
  for (const auto& l : layers) c.layer_dims.push_back(l.second->to_q->weight.size(0));
  if (t.count("image_proj.latents")) {
    c.variant = IpVariant::Plus;
    const at::Tensor& lat = t["image_proj.latents"];        // [1, Q, hidden]
    const at::Tensor& pin = need(t, "image_proj.proj_in.weight", what);    // [hidden, embed]
    const at::Tensor& q0 = need(t, "image_proj.layers.0.attn.to_q.weight", what);  // [inner, hidden]
    const at::Tensor& f0 = need(t, "image_proj.layers.0.ff.1.net.0.proj.weight", what);
    c.tokens = lat.size(1);
    c.hidden = lat.size(2);
    c.image_dim = pin.size(1);
    c.dim_head = 64;  // as the released Resampler (and diffusers' loader) fix it
    c.heads = q0.size(0) / c.dim_head;
    c.ffn_ratio = f0.size(0) / c.hidden;
    c.depth = 0;
    while (t.count("image_proj.layers." + std::to_string(c.depth) + ".attn.to_q.weight")) ++c.depth;
  } else {
    const at::Tensor& w = need(t, "image_proj.image_embeds.weight", what);  // [T*C, D_img]
    c.image_dim = w.size(1);
    if (w.size(0) % c.cross_dim)
      throw CheckpointError(what + ": image projection width " + std::to_string(w.size(0)) +
                            " is not a multiple of the UNet's cross_attention_dim " + std::to_string(c.cross_dim));
    c.tokens = w.size(0) / c.cross_dim;
  }
  IpAdapter adapter(c);
  load_state_dict(*adapter, t, RenameTable(), LoadOptions(), what);
  adapter->eval();
  adapter->to(unet->parameters().front().device());
  return adapter;
}

IpAdapter load_ip_adapter_file(const std::string& path, UNet2DCondition& unet) {
  TensorStore store = TensorStore::open(path);
  return load_ip_adapter(read_all(store), unet, "", path);
}

void save_ip_adapter(IpAdapter& adapter, const std::string& path, bool f16) {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& kv : adapter->named_parameters(true)) {
    std::string k = kv.key();
    static const std::regex layer(R"(layers\.(\d+)\.(to_[kv]_ip)\.weight)");
    std::smatch m;
    if (std::regex_match(k, m, layer)) {
      k = "ip_adapter." + std::to_string(2 * std::stol(m[1]) + 1) + "." + m[2].str() + ".weight";
    } else if (adapter->config().variant == IpVariant::Base) {
      if (starts_with(k, "image_proj.image_embeds.")) k = "image_proj.proj." + k.substr(24);
    }
    // Plus: the resampler keeps its diffusers-style names under image_proj. (latents, proj_in,
    // layers.<j>.{ln0, ln1, attn.to_{q,k,v,out.0}, ff.*}, proj_out, norm_out), which the loader
    // reads as they are next to the original layout's per-layer keys.
    out.emplace_back(k, f16 ? kv.value().detach().to(at::kHalf) : kv.value());
  }
  const bool plus = adapter->config().variant == IpVariant::Plus;
  write_safetensors(path, out, {{"format", "pt"}, {"iris.ip_adapter", plus ? "plus" : "base"}});
}

std::vector<double> ip_layer_scales(const std::string& preset, double w, UNet2DCondition& unet) {
  const auto layers = unet->cross_attention_layers();
  const size_t n = layers.size();
  if (preset == "all") return std::vector<double>(n, w);
  // Execution order: down layers, the mid layer, then up layers; the processor order puts
  // the mid layer last.
  size_t n_down = 0;
  for (const auto& l : layers) n_down += starts_with(l.first, "down_blocks.");
  auto exec_index = [&](size_t i) {
    if (starts_with(layers[i].first, "down_blocks.")) return i;
    if (starts_with(layers[i].first, "mid_block.")) return n_down;
    return i + 1;  // up layers come after the mid one
  };
  std::vector<double> s(n, 0.0);
  for (size_t i = 0; i < n; ++i) {
    const size_t e = exec_index(i);
    if (preset == "style") s[i] = (e <= 3 || e >= 9) ? w : 0.0;
    else if (preset == "composition") s[i] = e == 4 ? 0.25 * w : e == 5 ? w : 0.0;
    else throw ConfigError("IP-Adapter layer preset \"" + preset + "\": expected all, style or composition");
  }
  return s;
}

void attach_ip_adapter(IpAdapter& adapter, UNet2DCondition& unet, const at::Tensor& tokens, double scale,
                       const std::vector<double>& scales, const at::Tensor& mask, const std::string& owner) {
  auto layers = unet->cross_attention_layers();
  if (adapter->to_k_ip.size() != layers.size())
    throw ConfigError("IP-Adapter has " + std::to_string(adapter->to_k_ip.size()) + " layers, the UNet " +
                      std::to_string(layers.size()));
  if (!scales.empty() && scales.size() != layers.size())
    throw ConfigError("IP-Adapter: " + std::to_string(scales.size()) + " per-layer scales for " +
                      std::to_string(layers.size()) + " layers");
  detach_streams(unet, owner);
  for (size_t i = 0; i < layers.size(); ++i) {
    auto s = std::make_shared<AttentionStream>();
    s->owner = owner;
    s->to_k = adapter->to_k_ip[i];
    s->to_v = adapter->to_v_ip[i];
    s->tokens = tokens;
    s->scale = scales.empty() ? scale : scales[i];
    s->mask = mask;
    layers[i].second->streams.push_back(s);
  }
}

void detach_streams(UNet2DCondition& unet, const std::string& owner) {
  for (auto& [path, attn] : unet->cross_attention_layers()) {
    auto& v = attn->streams;
    v.erase(std::remove_if(v.begin(), v.end(), [&](const auto& s) { return s->owner == owner; }), v.end());
  }
}

}  // namespace iris
