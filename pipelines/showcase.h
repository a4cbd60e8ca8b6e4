#pragma once
// The starter pack's showcase: one grid PNG with text-to-image, image-prompt (IP-Adapter),
// style (PokeFusion) and skeleton (SK-Adapter) results, each picture labelled with what made
// it. `iris showcase` and the README's main command render it.
//
// Adapters: explicit paths, or by default the pack layout <model>/adapters/{ip-adapter,
// style-adapter, sk-adapter}.safetensors. A row whose adapter is missing is left out with a
// note (a plain diffusers folder still gets its text-to-image row).
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/image.h"
#include "core/progress.h"

namespace iris {

struct ShowcaseOptions {
  std::string ip_adapter, style_adapter, sk_adapter;  // "" : the pack layout under the model folder
  std::string sampler = "euler";
  int steps = 20;
  double cfg_scale = 4.0;
  uint64_t seed = 42;
  int size = 64;        // generated image side
  int cell_scale = 3;   // pictures are magnified (nearest) by this in the grid
  std::string device = "cpu";
  std::function<void(const std::string&)> log;  // notes and one line per picture
  Progress progress;                            // per picture (and cancel)
};

struct ShowcaseCell {
  Image image;
  std::string label;
  bool reference = false;  // an input (reference image, pose map), not a generated picture
};
struct ShowcaseRow {
  std::string title;
  std::vector<ShowcaseCell> cells;
};

// Renders every row the model supports. Throws what SdModel::load / generate throw.
std::vector<ShowcaseRow> render_showcase(const std::string& model_dir, const ShowcaseOptions& options);

// The grid: per row a title line, then its pictures side by side with wrapped labels below;
// inputs framed in grey, results in white.
Image showcase_grid(const std::vector<ShowcaseRow>& rows, int cell_scale);

}  // namespace iris
