#pragma once
// Tinyworld scenes: a scene graph (background, style, 1-3 objects on a 3x3 grid, an optional
// stick figure), the seeded sampler that makes them, their JSON form, and the train /
// held-out split.
//
// Determinism: sample_scene(seed, options) depends only on its arguments and produces the same
// scene on every platform (std::mt19937_64 plus our own integer/real conversions, positions
// rounded to 1e-4). Scene JSON example:
//   {"seed": 42, "resolution": 64, "background": "gray", "style": "outlined",
//    "objects": [{"shape": "circle", "color": "red", "size": "small", "position": "top left",
//                 "dx": 0.004, "dy": -0.01}],
//    "figure": {"color": "green", "side": "left", "arms": "left up", "legs": "apart",
//               "height": 0.66, "skeleton": {...skeleton.h format...}}}
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "core/json_util.h"
#include "world/skeleton.h"
#include "world/vocab.h"

namespace iris::world {

struct Object {
  Shape shape = Shape::Circle;
  Color color = Color::Red;
  Size size = Size::Medium;
  int cell = 4;           // 0..8, row * 3 + col
  double dx = 0, dy = 0;  // small offset from the cell centre, image-normalised
};

struct Figure {
  Color color = Color::Red;  // the head's colour ("a green stick figure")
  Side side = Side::Left;
  ArmPose arms = ArmPose::Down;
  LegPose legs = LegPose::Together;
  double height = 0.66;  // head top to ankles, fraction of the image height
  Skeleton skeleton;     // default topology, posed and placed in image-normalised coordinates
};

struct Scene {
  uint64_t seed = 0;
  int resolution = 64;
  Background background = Background::Gray;
  Style style = Style::Flat;
  std::vector<Object> objects;
  std::optional<Figure> figure;
};

struct SamplerOptions {
  int resolution = 64;
  int min_objects = 1, max_objects = 3;  // 1..3 (at most 3 when a figure takes a column)
  double figure_probability = 0.25;
  // Vocabulary subsets to draw from (all by default).
  std::vector<Shape> shapes = all_shapes();
  std::vector<Color> colors = all_colors();
  std::vector<Style> styles = all_styles();
  std::vector<Background> backgrounds = all_backgrounds();
};

// One scene from one seed. A scene with a figure puts it on the left or right side and its
// objects in the opposite column (a figure with outstretched arms spans 0.6 of the width).
// Throws ConfigError for impossible options (empty subsets, object counts outside 1..9).
Scene sample_scene(uint64_t seed, const SamplerOptions& options = {});

// Seed of sample `index` of a dataset with `base_seed` (hashed, so neighbouring datasets do
// not share scenes).
uint64_t sample_seed(uint64_t base_seed, uint64_t index);

Json scene_to_json(const Scene& s);
// Throws ConfigError / FormatError naming `what` and the key.
Scene scene_from_json(const Json& j, const std::string& what);

// Pixel geometry of an object at the scene's resolution: centre (snapped to a pixel centre, so
// silhouettes are symmetric and flat renders have odd run lengths) and half extent.
struct ObjectGeometry {
  double cx = 0, cy = 0, half = 0;
};
ObjectGeometry object_geometry(const Object& o, int resolution);
// Normalised centre of a grid cell.
std::pair<double, double> cell_center(int cell);

// ---- Split -----------------------------------------------------------------------------------

enum class Split { Train, HeldOut };
const char* name(Split s);  // "train", "heldout"
Split parse_split(const std::string& s, const std::string& what = "split");

// Held-out scenes are those whose seed hashes into the held-out bucket, plus every scene that
// contains a held-out (colour, shape) combination: no training scene ever shows one.
// The default held-out combinations: purple triangles.
std::vector<std::pair<Color, Shape>> default_heldout_combos();
struct SplitPolicy {
  int heldout_percent = 10;
  std::vector<std::pair<Color, Shape>> heldout_combos = default_heldout_combos();
};
bool seed_held_out(uint64_t seed, const SplitPolicy& policy = {});
bool has_heldout_combo(const Scene& s, const SplitPolicy& policy = {});
Split scene_split(const Scene& s, const SplitPolicy& policy = {});

}  // namespace iris::world
