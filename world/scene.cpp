#include "world/scene.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "world/rng.h"

namespace iris::world {

namespace {

double round4(double x) { return std::round(x * 10000.0) / 10000.0; }

// Object offsets stay within ~1 px at 64x64 so neighbouring large objects never touch.
constexpr double kJitter = 0.015;

template <class T>
void require_nonempty(const std::vector<T>& v, const char* what) {
  if (v.empty()) throw ConfigError(std::string("sampler options: ") + what + " is empty");
}

}  // namespace

uint64_t sample_seed(uint64_t base_seed, uint64_t index) { return hash_combine(base_seed, index); }

std::pair<double, double> cell_center(int cell) { return {(cell_col(cell) + 0.5) / 3.0, (cell_row(cell) + 0.5) / 3.0}; }

ObjectGeometry object_geometry(const Object& o, int resolution) {
  const auto [cx, cy] = cell_center(o.cell);
  ObjectGeometry g;
  g.cx = std::floor((cx + o.dx) * resolution) + 0.5;
  g.cy = std::floor((cy + o.dy) * resolution) + 0.5;
  g.half = 0.5 * size_fraction(o.size) * resolution / 3.0;
  return g;
}

Scene sample_scene(uint64_t seed, const SamplerOptions& opt) {
  require_nonempty(opt.shapes, "shapes");
  require_nonempty(opt.colors, "colors");
  require_nonempty(opt.styles, "styles");
  require_nonempty(opt.backgrounds, "backgrounds");
  if (opt.min_objects < 1 || opt.max_objects < opt.min_objects || opt.max_objects > kNumCells)
    throw ConfigError("sampler options: need 1 <= min_objects <= max_objects <= 9");
  if (opt.resolution < 16) throw ConfigError("sampler options: resolution must be at least 16");

  // The stream is keyed by the mixed seed; the order of draws below is part of the format
  // (changing it changes every dataset).
  Rng rng(mix64(seed));
  Scene s;
  s.seed = seed;
  s.resolution = opt.resolution;
  s.background = rng.pick(opt.backgrounds);
  s.style = rng.pick(opt.styles);

  const bool with_figure = rng.chance(opt.figure_probability);
  std::vector<int> cells;
  Side side = Side::Left;
  if (with_figure) {
    side = rng.below(2) ? Side::Right : Side::Left;
    const int col = side == Side::Left ? 2 : 0;  // objects go to the opposite column
    cells = {col, 3 + col, 6 + col};
  } else {
    for (int c = 0; c < kNumCells; ++c) cells.push_back(c);
  }
  const int max_n = std::min<int>(opt.max_objects, static_cast<int>(cells.size()));
  const int min_n = std::min(opt.min_objects, max_n);
  const int n = rng.range(min_n, max_n);
  rng.shuffle(cells);
  for (int i = 0; i < n; ++i) {
    Object o;
    o.cell = cells[i];
    o.shape = rng.pick(opt.shapes);
    o.color = rng.pick(opt.colors);
    o.size = rng.pick(all_sizes());
    o.dx = round4(rng.uniform(-kJitter, kJitter));
    o.dy = round4(rng.uniform(-kJitter, kJitter));
    s.objects.push_back(o);
  }

  if (with_figure) {
    Figure f;
    f.side = side;
    f.color = rng.pick(opt.colors);
    f.arms = rng.pick(all_arm_poses());
    f.legs = rng.pick(all_leg_poses());
    f.height = round4(rng.uniform(0.60, 0.66));
    PoseParams p;
    p.arms = f.arms;
    p.legs = f.legs;
    p.height = f.height;
    // Centred in the outer ~0.6 of the width: arms held out still clear the object column.
    p.center_x = (side == Side::Left ? 0.31 : 0.69) + rng.uniform(-0.015, 0.015);
    p.top = rng.uniform(0.17, 0.23);
    for (int k = 0; k < 4; ++k) p.jitter_deg[k] = rng.uniform(-8, 8);
    for (int k = 4; k < 6; ++k) p.jitter_deg[k] = rng.uniform(-4, 4);
    f.skeleton = make_pose(p);
    s.figure = std::move(f);
  }
  return s;
}

Json scene_to_json(const Scene& s) {
  Json objects = Json::array();
  for (const auto& o : s.objects)
    objects.push_back({{"shape", name(o.shape)},
                       {"color", name(o.color)},
                       {"size", name(o.size)},
                       {"position", cell_name(o.cell)},
                       {"dx", round4(o.dx)},
                       {"dy", round4(o.dy)}});
  Json j = {{"seed", s.seed},
            {"resolution", s.resolution},
            {"background", name(s.background)},
            {"style", name(s.style)},
            {"objects", objects}};
  if (s.figure) {
    const Figure& f = *s.figure;
    j["figure"] = {{"color", name(f.color)}, {"side", name(f.side)},       {"arms", name(f.arms)},
                   {"legs", name(f.legs)},   {"height", round4(f.height)}, {"skeleton", skeleton_to_json(f.skeleton)}};
  }
  return j;
}

Scene scene_from_json(const Json& j, const std::string& what) {
  if (!j.is_object()) throw FormatError(join_context(what, "scene: expected a JSON object"));
  Scene s;
  if (j.contains("seed")) {
    if (!j["seed"].is_number_unsigned() && !j["seed"].is_number_integer())
      throw ConfigError(join_context(what, "key \"seed\": expected an integer"));
    s.seed = j["seed"].get<uint64_t>();
  }
  s.resolution = static_cast<int>(json_int(j, "resolution", 64, what));
  s.background = parse_background(json_require_string(j, "background", what), join_context(what, "background"));
  s.style = parse_style(json_require_string(j, "style", what), join_context(what, "style"));
  if (!j.contains("objects") || !j["objects"].is_array())
    throw FormatError(join_context(what, "objects: missing or not an array"));
  for (size_t i = 0; i < j["objects"].size(); ++i) {
    const Json& o = j["objects"][i];
    const std::string w = join_context(what, "objects[" + std::to_string(i) + "]");
    Object ob;
    ob.shape = parse_shape(json_require_string(o, "shape", w), w + ".shape");
    ob.color = parse_color(json_require_string(o, "color", w), w + ".color");
    ob.size = parse_size(json_require_string(o, "size", w), w + ".size");
    ob.cell = parse_cell(json_require_string(o, "position", w), w + ".position");
    ob.dx = json_number(o, "dx", 0.0, w);
    ob.dy = json_number(o, "dy", 0.0, w);
    s.objects.push_back(ob);
  }
  if (j.contains("figure") && !j["figure"].is_null()) {
    const Json& fj = j["figure"];
    const std::string w = join_context(what, "figure");
    Figure f;
    f.color = parse_color(json_require_string(fj, "color", w), w + ".color");
    f.side = parse_side(json_require_string(fj, "side", w), w + ".side");
    f.arms = parse_arm_pose(json_require_string(fj, "arms", w), w + ".arms");
    f.legs = parse_leg_pose(json_require_string(fj, "legs", w), w + ".legs");
    f.height = json_number(fj, "height", 0.66, w);
    if (!fj.contains("skeleton")) throw FormatError(join_context(w, "skeleton: missing"));
    f.skeleton = parse_skeleton(fj["skeleton"], w + ".skeleton");
    s.figure = std::move(f);
  }
  return s;
}

const char* name(Split s) { return s == Split::Train ? "train" : "heldout"; }

Split parse_split(const std::string& s, const std::string& what) {
  if (s == "train") return Split::Train;
  if (s == "heldout") return Split::HeldOut;
  throw ConfigError(what + ": unknown split \"" + s + "\" (expected \"train\" or \"heldout\")");
}

std::vector<std::pair<Color, Shape>> default_heldout_combos() { return {{Color::Purple, Shape::Triangle}}; }

bool seed_held_out(uint64_t seed, const SplitPolicy& policy) {
  // A hash of its own (not the sampler's stream) so the split is independent of content.
  return static_cast<int>(mix64(seed ^ 0x5b1d5eed5b1d5eedull) % 100) < policy.heldout_percent;
}

bool has_heldout_combo(const Scene& s, const SplitPolicy& policy) {
  for (const auto& o : s.objects)
    for (const auto& [c, sh] : policy.heldout_combos)
      if (o.color == c && o.shape == sh) return true;
  return false;
}

Split scene_split(const Scene& s, const SplitPolicy& policy) {
  return seed_held_out(s.seed, policy) || has_heldout_combo(s, policy) ? Split::HeldOut : Split::Train;
}

}  // namespace iris::world
