#include "pipelines/patch_labels.h"

#include <algorithm>

#include "core/error.h"
#include "world/render.h"

namespace iris {

namespace {
std::string str(int64_t v) { return std::to_string(v); }
}  // namespace

void check_label_grid(int res, int64_t grid) {
  if (grid <= 0 || res % grid != 0)
    throw ConfigError("patch labels need " + str(res) + "-pixel Tinyworld scenes to split into " + str(grid) +
                      "x" + str(grid) + " whole patches (the encoder's image_size / patch_size); use another encoder or "
                      "no labels");
}

std::vector<int> patch_owners(const world::Scene& scene, int64_t grid) {
  const int res = scene.resolution;
  check_label_grid(res, grid);
  const int cell = res / static_cast<int>(grid);
  const std::vector<int> owner = world::render_owner_map(scene);
  const int items = static_cast<int>(scene.objects.size()) + 1;
  std::vector<int> out;
  out.reserve(static_cast<size_t>(grid * grid));
  for (int gy = 0; gy < grid; ++gy)
    for (int gx = 0; gx < grid; ++gx) {
      std::vector<int> count(static_cast<size_t>(items), 0);
      for (int y = gy * cell; y < (gy + 1) * cell; ++y)
        for (int x = gx * cell; x < (gx + 1) * cell; ++x) {
          const int w = owner[static_cast<size_t>(y) * res + x];
          if (w >= 0) ++count[static_cast<size_t>(w)];
        }
      const auto best = std::max_element(count.begin(), count.end());
      out.push_back(*best * 16 >= cell * cell ? static_cast<int>(best - count.begin()) : -1);
    }
  return out;
}

// Dense patch labels: per token of a grid x grid patch map, the colour / shape / size class of
// the item covering most of its patch (patch_owners). Class 0 is the background; the stick
// figure is its own colour and shape class and has no size (-100: ignored). Targets
// [B * grid * grid] each. With scene_labels two more targets per patch, the same for every
// patch of a scene: its drawing style and its background (what the object labels alone would
// let the tower forget).
std::vector<at::Tensor> patch_label_targets(const std::vector<world::Scene>& scenes, int64_t grid,
                                            bool scene_labels) {
  const int64_t n_colors = static_cast<int64_t>(world::all_colors().size());
  const int64_t n_shapes = static_cast<int64_t>(world::all_shapes().size());
  std::vector<int64_t> color, shape, size, style, background;
  for (const world::Scene& scene : scenes) {
    const int items = static_cast<int>(scene.objects.size()) + 1;
    for (const int who : patch_owners(scene, grid)) {
      if (who < 0) {
        color.push_back(0), shape.push_back(0), size.push_back(0);
      } else if (who == items - 1) {
        color.push_back(n_colors + 1), shape.push_back(n_shapes + 1), size.push_back(-100);
      } else {
        const world::Object& ob = scene.objects[static_cast<size_t>(who)];
        color.push_back(1 + static_cast<int64_t>(ob.color));
        shape.push_back(1 + static_cast<int64_t>(ob.shape));
        size.push_back(1 + static_cast<int64_t>(ob.size));
      }
      style.push_back(static_cast<int64_t>(scene.style));
      background.push_back(static_cast<int64_t>(scene.background));
    }
  }
  auto t = [](const std::vector<int64_t>& v) { return at::tensor(v, at::kLong); };
  std::vector<at::Tensor> out = {t(color), t(shape), t(size)};
  if (scene_labels) out.push_back(t(style)), out.push_back(t(background));
  return out;
}

}  // namespace iris
