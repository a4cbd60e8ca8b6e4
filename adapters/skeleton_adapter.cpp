#include "adapters/skeleton_adapter.h"

#include <algorithm>
#include <cmath>
#include <deque>
#include <limits>

#include <torch/nn/modules/container/modulelist.h>
#include <torch/utils.h>

#include "adapters/adapter_streams.h"
#include "adapters/ip_adapter.h"
#include "core/attention.h"
#include "core/error.h"
#include "core/state_dict.h"

namespace iris {

namespace nn = torch::nn;

namespace {

constexpr const char* kKind = "skeleton";
constexpr const char* kOwner = "skeleton";
constexpr double kPi = 3.14159265358979323846;

}  // namespace

Json SkeletonAdapterConfig::to_json() const {
  return {{"fourier_bands", fourier_bands}, {"dim", dim},
          {"depth", depth},                 {"heads", heads},
          {"ff_mult", ff_mult},             {"max_distance", max_distance},
          {"max_joints", max_joints},       {"joint_types", joint_types},
          {"cross_dim", cross_dim},         {"layers", layers},
          {"layer_widths", layer_widths}};
}

SkeletonAdapterConfig SkeletonAdapterConfig::from_json(const Json& j, const std::string& what) {
  SkeletonAdapterConfig c;
  c.fourier_bands = json_require_int(j, "fourier_bands", what);
  c.dim = json_require_int(j, "dim", what);
  c.depth = json_require_int(j, "depth", what);
  c.heads = json_require_int(j, "heads", what);
  c.ff_mult = json_require_int(j, "ff_mult", what);
  c.max_distance = json_require_int(j, "max_distance", what);
  c.max_joints = json_require_int(j, "max_joints", what);
  c.joint_types = json_string_list(j, "joint_types", what);
  c.cross_dim = json_require_int(j, "cross_dim", what);
  c.layers = json_int_list(j, "layers", what);
  c.layer_widths = json_int_list(j, "layer_widths", what);
  if (c.fourier_bands < 0 || c.fourier_bands > 16 || c.dim < 1 || c.depth < 0 || c.heads < 1 || c.dim % c.heads ||
      c.ff_mult < 1 || c.max_distance < 1 || c.max_joints < 1 || c.cross_dim < 1)
    throw FormatError(what + ": invalid skeleton encoder sizes " + c.to_json().dump());
  if (c.layers.empty() || c.layers.size() != c.layer_widths.size())
    throw FormatError(what + ": \"layers\" and \"layer_widths\" must be non-empty and of equal length");
  return c;
}

// ---- inputs ------------------------------------------------------------------------------------

SkeletonInputs SkeletonInputs::to(const c10::Device& d) const {
  return {features.to(d), types.to(d), distance.to(d), valid.to(d)};
}

std::vector<std::vector<int>> graph_distances(const world::Skeleton& s) {
  const size_t n = s.joints.size();
  std::vector<std::vector<int>> adj(n);
  for (const auto& [a, b] : s.edges) {
    adj.at(static_cast<size_t>(a)).push_back(b);
    adj.at(static_cast<size_t>(b)).push_back(a);
  }
  std::vector<std::vector<int>> dist(n, std::vector<int>(n, -1));
  for (size_t src = 0; src < n; ++src) {  // breadth-first search from every joint
    std::deque<int> queue{static_cast<int>(src)};
    dist[src][src] = 0;
    while (!queue.empty()) {
      const int u = queue.front();
      queue.pop_front();
      for (int v : adj[static_cast<size_t>(u)])
        if (dist[src][static_cast<size_t>(v)] < 0) {
          dist[src][static_cast<size_t>(v)] = dist[src][static_cast<size_t>(u)] + 1;
          queue.push_back(v);
        }
    }
  }
  return dist;
}

SkeletonInputs skeleton_inputs(const std::vector<world::Skeleton>& skeletons, const SkeletonAdapterConfig& c) {
  if (skeletons.empty()) throw ConfigError("skeleton adapter: no skeletons");
  size_t J = 0;
  for (const auto& s : skeletons) J = std::max(J, s.joints.size());
  const auto B = static_cast<int64_t>(skeletons.size());
  const int64_t F = c.fourier_bands, D = c.feature_dim(), Jn = static_cast<int64_t>(J);
  if (Jn > c.max_joints)
    throw ConfigError("skeleton has " + std::to_string(J) + " joints; the adapter reads at most " +
                      std::to_string(c.max_joints));
  std::vector<float> feat(static_cast<size_t>(B * Jn * D), 0.f);
  std::vector<int64_t> types(static_cast<size_t>(B * Jn), 0), dist(static_cast<size_t>(B * Jn * Jn));
  std::vector<uint8_t> valid(static_cast<size_t>(B * Jn), 0);
  const int64_t unreachable = c.max_distance + 1;
  for (int64_t b = 0; b < B; ++b) {
    const world::Skeleton& s = skeletons[static_cast<size_t>(b)];
    if (s.is_3d()) throw ConfigError("skeleton adapter: 3D skeleton given; project it first (skeleton_in_2d)");
    const auto d = graph_distances(s);
    bool any = false;
    for (int64_t j = 0; j < Jn; ++j) {
      for (int64_t k = 0; k < Jn; ++k) {
        const bool real = j < static_cast<int64_t>(s.joints.size()) && k < static_cast<int64_t>(s.joints.size());
        const int hops = real ? d[static_cast<size_t>(j)][static_cast<size_t>(k)] : -1;
        dist[static_cast<size_t>((b * Jn + j) * Jn + k)] = hops < 0 ? unreachable : std::min<int64_t>(hops, c.max_distance);
      }
      if (j >= static_cast<int64_t>(s.joints.size())) continue;
      const world::Joint& jt = s.joints[static_cast<size_t>(j)];
      if (!std::isfinite(jt.x) || !std::isfinite(jt.y) || !std::isfinite(jt.confidence))
        throw ConfigError("skeleton joint \"" + jt.name + "\": coordinates or confidence are not finite");
      float* f = &feat[static_cast<size_t>((b * Jn + j) * D)];
      const double p[2] = {jt.x, jt.y};
      for (int64_t k = 0; k < F; ++k)
        for (int a = 0; a < 2; ++a) {
          const double w = std::ldexp(kPi, static_cast<int>(k)) * p[a];  // 2^k * pi * p
          f[4 * k + 2 * a] = static_cast<float>(std::sin(w));
          f[4 * k + 2 * a + 1] = static_cast<float>(std::cos(w));
        }
      f[4 * F] = static_cast<float>(jt.x - 0.5);
      f[4 * F + 1] = static_cast<float>(jt.y - 0.5);
      f[4 * F + 2] = static_cast<float>(jt.confidence);
      int64_t type_row = 0;
      for (size_t t = 0; t < c.joint_types.size(); ++t)
        if (c.joint_types[t] == jt.type) type_row = static_cast<int64_t>(t) + 1;
      types[static_cast<size_t>(b * Jn + j)] = type_row;
      const bool present = jt.confidence > 0;
      valid[static_cast<size_t>(b * Jn + j)] = present;
      any = any || present;
    }
    if (!any) throw ConfigError("skeleton has no visible joint (every confidence is 0)");
  }
  SkeletonInputs in;
  in.features = at::tensor(feat, at::kFloat).view({B, Jn, D});
  in.types = at::tensor(types, at::kLong).view({B, Jn});
  in.distance = at::tensor(dist, at::kLong).view({B, Jn, Jn});
  in.valid = at::tensor(std::vector<int64_t>(valid.begin(), valid.end()), at::kLong).view({B, Jn}).to(at::kBool);
  return in;
}

world::Skeleton skeleton_in_2d(const world::Skeleton& s, const world::Camera* camera,
                               const std::function<void(const std::string&)>& warn) {
  std::string message;
  world::Skeleton flat = world::project_to_2d(s, camera, &message);
  if (!message.empty() && warn) warn(message);
  return flat;
}

// ---- encoder -----------------------------------------------------------------------------------

SkeletonEncoderImpl::SkeletonEncoderImpl(const SkeletonAdapterConfig& c) : heads(c.heads) {
  coord_proj = register_module("coord_proj", nn::Linear(c.feature_dim(), c.dim));
  type_embedding = register_module(
      "type_embedding", nn::Embedding(static_cast<int64_t>(c.joint_types.size()) + 1, c.dim));
  auto layers = register_module("layers", nn::ModuleList());
  for (int64_t l = 0; l < c.depth; ++l) {
    SkeletonEncoderLayer b;
    auto m = std::make_shared<nn::Module>();
    b.norm1 = m->register_module("norm1", nn::LayerNorm(nn::LayerNormOptions({c.dim})));
    auto attn = m->register_module("attn", std::make_shared<nn::Module>());
    b.to_qkv = attn->register_module("to_qkv", nn::Linear(c.dim, 3 * c.dim));
    b.to_out = attn->register_module("to_out", nn::Linear(c.dim, c.dim));
    b.distance_bias = attn->register_parameter("distance_bias", at::zeros({c.heads, c.max_distance + 2}));
    b.norm2 = m->register_module("norm2", nn::LayerNorm(nn::LayerNormOptions({c.dim})));
    auto ff = m->register_module("ff", std::make_shared<nn::Module>());
    b.fc1 = ff->register_module("fc1", nn::Linear(c.dim, c.ff_mult * c.dim));
    b.fc2 = ff->register_module("fc2", nn::Linear(c.ff_mult * c.dim, c.dim));
    layers->push_back(m);
    blocks.push_back(b);
  }
  norm_out = register_module("norm_out", nn::LayerNorm(nn::LayerNormOptions({c.dim})));
  proj_out = register_module("proj_out", nn::Linear(c.dim, c.cross_dim));
  token_norm = register_module("token_norm", nn::LayerNorm(nn::LayerNormOptions({c.cross_dim})));
}

at::Tensor SkeletonEncoderImpl::forward(const SkeletonInputs& in) {
  const int64_t B = in.features.size(0), J = in.features.size(1);
  at::Tensor x = coord_proj(in.features) + type_embedding(in.types);  // [B, J, dim]
  const int64_t dim = x.size(2), hd = dim / heads;
  // Keys that are missing joints get -inf; every row keeps at least one present key.
  at::Tensor key_block = at::zeros({B, 1, 1, J}, x.options())
                             .masked_fill(in.valid.logical_not().view({B, 1, 1, J}),
                                          -std::numeric_limits<float>::infinity());
  auto split = [&](const at::Tensor& t) { return t.view({B, J, heads, hd}).transpose(1, 2); };  // [B, H, J, hd]
  for (SkeletonEncoderLayer& b : blocks) {
    // Topology: bias[h, bucket(i, j)] -> [B, H, J, J]
    at::Tensor bias = b.distance_bias.index_select(1, in.distance.reshape({-1})).view({heads, B, J, J}).transpose(0, 1);
    auto qkv = b.to_qkv(b.norm1(x)).chunk(3, -1);
    AttentionOptions opt;
    opt.mask = bias + key_block;
    at::Tensor o = attention(split(qkv[0]), split(qkv[1]), split(qkv[2]), opt);  // [B, H, J, hd]
    x = x + b.to_out(o.transpose(1, 2).reshape({B, J, dim}));
    x = x + b.fc2(at::gelu(b.fc1(b.norm2(x))));
  }
  return token_norm(proj_out(norm_out(x)));  // [B, J, C]
}

SkeletonAdapterImpl::SkeletonAdapterImpl(const SkeletonAdapterConfig& c) : config_(c) {
  encoder = register_module("encoder", SkeletonEncoder(c));
  auto layers = register_module("layers", nn::ModuleList());
  for (int64_t width : c.layer_widths) {
    auto m = std::make_shared<nn::Module>();
    to_k_sk.push_back(m->register_module("to_k_sk", nn::Linear(nn::LinearOptions(c.cross_dim, width).bias(false))));
    to_v_sk.push_back(m->register_module("to_v_sk", nn::Linear(nn::LinearOptions(c.cross_dim, width).bias(false))));
    layers->push_back(m);
  }
}

std::vector<std::string> default_joint_types() {
  std::vector<std::string> types;
  for (const auto& j : world::default_skeleton_2d().joints)
    if (std::find(types.begin(), types.end(), j.type) == types.end()) types.push_back(j.type);
  return types;
}

SkeletonAdapter make_skeleton_adapter(UNet2DCondition& unet, const std::vector<std::string>& joint_types,
                                      SkeletonAdapterConfig c) {
  c.joint_types = joint_types;
  c.cross_dim = unet->config().cross_attention_dim;
  c.layers = all_cross_attention_layers(unet);
  if (c.layers.empty()) throw ConfigError("skeleton adapter: the UNet has no cross-attention layers");
  c.layer_widths = cross_attention_widths(unet, c.layers);
  SkeletonAdapter a(c);
  copy_layer_kv(unet, c.layers, a->to_k_sk, a->to_v_sk);
  a->to(unet->parameters().front().device());
  return a;
}

void save_skeleton_adapter(SkeletonAdapter& adapter, const std::string& path) {
  save_adapter_file(path, *adapter, kKind, adapter->config().to_json());
}

SkeletonAdapter load_skeleton_adapter(const std::string& path, UNet2DCondition& unet) {
  const SkeletonAdapterConfig c = SkeletonAdapterConfig::from_json(read_adapter_config(path, kKind), path);
  check_adapter_layers(c.layers, c.layer_widths, c.cross_dim, unet, all_cross_attention_layers(unet), path);
  SkeletonAdapter a(c);
  load_adapter_weights(*a, path, unet);
  return a;
}

void attach_skeleton(SkeletonAdapter& adapter, UNet2DCondition& unet, const at::Tensor& tokens,
                     const at::Tensor& valid, double scale, const std::vector<bool>& rows) {
  if (static_cast<int64_t>(rows.size()) != tokens.size(0))
    throw ShapeError("skeleton: " + std::to_string(rows.size()) + " row flags for " +
                     std::to_string(tokens.size(0)) + " token rows");
  StreamInputs in;
  in.tokens = tokens;
  in.gate = row_gate(rows, tokens.device());
  in.key_mask = valid;
  attach_token_stream(unet, kOwner, adapter->config().layers, adapter->to_k_sk, adapter->to_v_sk, in, {scale});
}

void detach_skeleton(UNet2DCondition& unet) { detach_streams(unet, kOwner); }

}  // namespace iris
