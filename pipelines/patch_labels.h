#pragma once
// Dense patch labels of Tinyworld scenes, shared by the trainers that teach a vision encoder what
// covers each patch (the VLM's vision stage and fine-tune, the IP-Adapter's image encoder):
// per patch of a grid x grid map over the render, the colour / shape / size of the item covering
// most of it, and optionally the scene's style and background, with linear read-out heads and
// their cross-entropy (training aids, never exported).
#include <cstdint>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <torch/nn/modules/linear.h>

#include "pipelines/trainer.h"
#include "world/scene.h"
#include "world/vocab.h"

namespace iris {

// Throws ConfigError unless `res`-pixel scenes split into grid x grid whole patches.
void check_label_grid(int res, int64_t grid);

// Per patch of a grid x grid map over the scene's render (row-major), the item covering most of
// it: an index into scene.objects, objects.size() for the stick figure, or -1 when none covers
// 1/16 of it. ConfigError when the scene's resolution does not split into whole patches.
std::vector<int> patch_owners(const world::Scene& scene, int64_t grid);

// Dense patch labels: per token of a grid x grid patch map, the colour / shape / size class of
// the item covering most of its patch (patch_owners). Class 0 is the background; the stick
// figure is its own colour and shape class and has no size (-100: ignored). Targets
// [B * grid * grid] each. With scene_labels two more targets per patch, the same for every
// patch of a scene: its drawing style and its background (what the object labels alone would
// let the tower forget).
std::vector<at::Tensor> patch_label_targets(const std::vector<world::Scene>& scenes, int64_t grid,
                                            bool scene_labels = false);

// Linear read-outs of the patch labels from tokens of width `dim` (training aids, never
// exported): colour, shape, size, and with scene_labels style and background.
struct PatchLabelHeads {
  PatchLabelHeads(int64_t dim, uint64_t seed, bool scene_labels = false) {
    auto add = [&](const char* name, const char* shown, size_t classes, bool items_only) {
      heads.push_back({name, shown, torch::nn::Linear(dim, static_cast<int64_t>(classes)), items_only});
    };
    add("color_head.", "colour", world::all_colors().size() + 2, true);
    add("shape_head.", "shape", world::all_shapes().size() + 2, true);
    add("size_head.", "size", world::all_sizes().size() + 1, true);
    if (scene_labels) {
      add("style_head.", "style", world::all_styles().size(), false);
      add("background_head.", "background", world::all_backgrounds().size(), false);
    }
    at::NoGradGuard no_grad;
    at::Generator gen = at::detail::createCPUGenerator(seed);
    for (Head& h : heads) {
      h.linear->weight.normal_(0.0, 0.02, gen);
      h.linear->bias.zero_();
    }
    reset_tallies();
  }
  NamedTensors parameters(const std::string& prefix) {
    NamedTensors out;
    for (Head& h : heads)
      for (auto& p : named_trainable_parameters(*h.linear, prefix + h.name)) out.push_back(p);
    return out;
  }
  // tokens [B, N, D] -> the summed cross-entropies of the labels (the figure's size -100: ignored).
  at::Tensor loss(const at::Tensor& tokens, const std::vector<at::Tensor>& labels) {
    if (labels.size() != heads.size()) throw std::logic_error("PatchLabelHeads: labels do not match the heads");
    const at::Tensor flat = tokens.reshape({-1, tokens.size(2)}).to(at::kFloat);  // [B * N, D]
    at::Tensor total;
    for (size_t i = 0; i < heads.size(); ++i) {
      const at::Tensor logits = heads[i].linear(flat);
      tally(i, logits, labels[i]);
      const at::Tensor l = at::cross_entropy_loss(logits, labels[i]);
      total = total.defined() ? total + l : l;
    }
    ++steps;
    return total;
  }
  // Every `every` calls of loss(), the read-out accuracy over those steps: what the vision
  // features tell, which the answers alone cannot show. Object labels count on the patches an
  // item covers (class 0, the background, is most patches and would hide whether objects are
  // read); scene labels on every patch. "patch labels read (last 200 steps): colour 97% shape
  // 41% size 63%"; "" when not due.
  std::string report_if_due(int64_t every) {
    every = std::max<int64_t>(every, 1);
    if (steps < every) return "";
    std::string out = "patch labels read (last " + std::to_string(steps) + " steps):";
    for (size_t i = 0; i < heads.size(); ++i)
      out += " " + std::string(heads[i].shown) + " " +
             (seen[i] ? std::to_string(static_cast<int>(100.0 * right[i] / seen[i] + 0.5)) + "%" : std::string("-"));
    reset_tallies();
    return out;
  }
  void reset_tallies() {
    steps = 0;
    right.assign(heads.size(), 0);
    seen.assign(heads.size(), 0);
  }

 private:
  struct Head {
    const char* name;   // parameter prefix
    const char* shown;  // in reports
    torch::nn::Linear linear;
    bool items_only;    // accuracy over item patches (labels > 0) rather than every patch
  };
  std::vector<Head> heads;
  std::vector<int64_t> right, seen;
  int64_t steps = 0;  // loss() calls since the last report
  void tally(size_t i, const at::Tensor& logits, const at::Tensor& labels) {
    at::NoGradGuard no_grad;
    const at::Tensor counted = heads[i].items_only ? labels > 0 : labels >= 0;
    right[i] += (logits.argmax(1).eq(labels) & counted).sum().item<int64_t>();
    seen[i] += counted.sum().item<int64_t>();
  }
};


}  // namespace iris
