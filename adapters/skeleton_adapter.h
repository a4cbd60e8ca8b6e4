#pragma once
// SK-Adapter (arXiv 2603.14152; code not released), applied to the 2D UNet: a skeleton (joint
// coordinates + topology, world/skeleton.h format) is encoded into one token per joint; the
// tokens are read by every attn2 layer of the frozen UNet through their own K/V projections
// (to_k_sk / to_v_sk), a decoupled stream like IP-Adapter's (DESIGN.md).
//
// Encoder (sizes are ours; the paper publishes none):
//   per joint: Fourier features of (x, y) (sin/cos of 2^k*pi*p, k < F = 6), the centred
//   coordinates and the confidence -> coord_proj Linear(4F + 3 -> dim 128), plus a learned
//   joint-type embedding (row 0: any type not in the adapter's list);
//   `depth` 2 pre-LN transformer layers (4 heads, GELU MLP x2) whose attention adds a learned
//   per-head bias indexed by the graph (shortest-path) distance between the two joints:
//   distances 0..max_distance (6; longer ones share the last bucket) and one "unreachable"
//   bucket — the topology enters only here (graph relative position encoding);
//   norm_out -> proj_out Linear(dim -> C) -> token_norm LayerNorm(C): tokens [B, J, C].
// Missing joints (confidence 0, or projected outside the image) are masked: no other joint
// attends to them in the encoder and the UNet's attention ignores their tokens (key mask).
// 3D skeletons are projected with a camera (the file's, or one given) before encoding; with no
// camera z is dropped and the caller is warned (world::project_to_2d).
// Classifier-free guidance: the unconditional rows have the stream switched off (as style).
//
// File: one safetensors, metadata "iris.adapter" = "skeleton", "iris.config" = the config as
// JSON; parameters encoder.* and layers.<i>.to_{k,v}_sk.weight for the i-th attn2 layer in
// attention-processor order (down, up, mid last). Loading is strict.
#include <functional>
#include <string>
#include <vector>

#include <torch/nn/module.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>

#include "core/json_util.h"
#include "diffusion/unet.h"
#include "world/skeleton.h"

namespace iris {

struct SkeletonAdapterConfig {
  int64_t fourier_bands = 6;   // F
  int64_t dim = 128;           // encoder width
  int64_t depth = 2;           // transformer layers
  int64_t heads = 4;
  int64_t ff_mult = 2;
  int64_t max_distance = 6;    // graph-distance buckets 0..max_distance, then "unreachable"
  int64_t max_joints = 64;
  std::vector<std::string> joint_types;  // type embedding rows 1..n (row 0: other types)
  int64_t cross_dim = 768;
  std::vector<int64_t> layers;           // attn2 indices (processor order): all of them
  std::vector<int64_t> layer_widths;

  int64_t feature_dim() const { return 4 * fourier_bands + 3; }
  Json to_json() const;
  static SkeletonAdapterConfig from_json(const Json& j, const std::string& what);
};

// A batch of 2D skeletons as tensors (padded to the largest joint count).
struct SkeletonInputs {
  at::Tensor features;  // [B, J, 4F + 3] float
  at::Tensor types;     // [B, J] int64 type-embedding rows
  at::Tensor distance;  // [B, J, J] int64 distance buckets
  at::Tensor valid;     // [B, J] bool: a present joint (confidence > 0, not padding)
  SkeletonInputs to(const c10::Device& device) const;
};

// Shortest-path hop counts between joints over the (undirected) edges; -1 = unreachable.
std::vector<std::vector<int>> graph_distances(const world::Skeleton& s);

// Builds the inputs. Skeletons must be 2D (skeleton_in_2d); ConfigError when one has no
// present joint or more than max_joints joints.
SkeletonInputs skeleton_inputs(const std::vector<world::Skeleton>& skeletons, const SkeletonAdapterConfig& c);

// The skeleton in 2D: 3D joints projected with `camera` (or the file's camera); with none, z
// is dropped and `warn` gets a message saying so. Joints projected outside the image become
// missing (confidence 0).
world::Skeleton skeleton_in_2d(const world::Skeleton& s, const world::Camera* camera,
                               const std::function<void(const std::string&)>& warn);

struct SkeletonEncoderLayer {
  torch::nn::LayerNorm norm1{nullptr}, norm2{nullptr};
  torch::nn::Linear to_qkv{nullptr}, to_out{nullptr}, fc1{nullptr}, fc2{nullptr};
  at::Tensor distance_bias;  // [heads, max_distance + 2]
};

struct SkeletonEncoderImpl : torch::nn::Module {
  explicit SkeletonEncoderImpl(const SkeletonAdapterConfig& c);
  at::Tensor forward(const SkeletonInputs& in);  // -> tokens [B, J, C]
  torch::nn::Linear coord_proj{nullptr}, proj_out{nullptr};
  torch::nn::Embedding type_embedding{nullptr};
  std::vector<SkeletonEncoderLayer> blocks;
  torch::nn::LayerNorm norm_out{nullptr}, token_norm{nullptr};
  int64_t heads;
};
TORCH_MODULE(SkeletonEncoder);

class SkeletonAdapterImpl : public torch::nn::Module {
 public:
  explicit SkeletonAdapterImpl(const SkeletonAdapterConfig& c);
  const SkeletonAdapterConfig& config() const { return config_; }
  SkeletonEncoder encoder{nullptr};
  std::vector<torch::nn::Linear> to_k_sk, to_v_sk;  // one per attn2 layer

 private:
  SkeletonAdapterConfig config_;
};
TORCH_MODULE(SkeletonAdapter);

// A new adapter for `unet`: joint types from `joint_types` (e.g. the default skeleton's),
// K/V copied from each attn2 layer's to_k / to_v.
SkeletonAdapter make_skeleton_adapter(UNet2DCondition& unet, const std::vector<std::string>& joint_types,
                                      SkeletonAdapterConfig sizes = {});
// The default 2D human skeleton's joint types, in first-seen order.
std::vector<std::string> default_joint_types();

void save_skeleton_adapter(SkeletonAdapter& adapter, const std::string& path);
SkeletonAdapter load_skeleton_adapter(const std::string& path, UNet2DCondition& unet);

// Attaches the skeleton stream (owner "skeleton") to every attn2 layer. tokens [B_unet, J, C]
// and valid [B_unet, J] from the encoder; rows: which UNet rows get the skeleton.
void attach_skeleton(SkeletonAdapter& adapter, UNet2DCondition& unet, const at::Tensor& tokens,
                     const at::Tensor& valid, double scale, const std::vector<bool>& rows);
void detach_skeleton(UNet2DCondition& unet);

}  // namespace iris
