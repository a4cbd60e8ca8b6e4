#include "app/studio/skeleton_edit.h"

#include <algorithm>
#include <filesystem>

#include "core/error.h"

namespace iris::studio {

namespace fs = std::filesystem;

namespace {
double clamp01(double v) { return v < 0 ? 0 : v > 1 ? 1 : v; }
void check_index(const world::Skeleton& s, int j, const char* what) {
  if (j < 0 || j >= static_cast<int>(s.joints.size()))
    throw ConfigError(std::string(what) + ": joint index " + std::to_string(j) + " is out of range (" +
                      std::to_string(s.joints.size()) + " joints)");
}
}  // namespace

int nearest_joint(const world::Skeleton& s, double x, double y, double radius) {
  int best = -1;
  double best_d2 = radius * radius;
  for (size_t i = 0; i < s.joints.size(); ++i) {
    const double dx = s.joints[i].x - x, dy = s.joints[i].y - y, d2 = dx * dx + dy * dy;
    if (d2 <= best_d2) {
      best_d2 = d2;
      best = static_cast<int>(i);
    }
  }
  return best;
}

void move_joint(world::Skeleton& s, int joint, double x, double y) {
  check_index(s, joint, "move_joint");
  s.joints[joint].x = clamp01(x);
  s.joints[joint].y = clamp01(y);
}

int add_joint(world::Skeleton& s, const std::string& base, double x, double y) {
  const std::string stem = base.empty() ? "joint" : base;
  std::string name = stem;
  for (int i = 2; s.find(name) >= 0; ++i) name = stem + "_" + std::to_string(i);
  world::Joint j;
  j.name = name;
  j.type = name;
  j.x = clamp01(x);
  j.y = clamp01(y);
  s.joints.push_back(j);
  return static_cast<int>(s.joints.size()) - 1;
}

void remove_joint(world::Skeleton& s, int joint) {
  check_index(s, joint, "remove_joint");
  s.joints.erase(s.joints.begin() + joint);
  std::vector<std::pair<int, int>> kept;
  for (auto [a, b] : s.edges) {
    if (a == joint || b == joint) continue;
    kept.emplace_back(a > joint ? a - 1 : a, b > joint ? b - 1 : b);
  }
  s.edges = std::move(kept);
}

bool toggle_bone(world::Skeleton& s, int a, int b) {
  check_index(s, a, "toggle_bone");
  check_index(s, b, "toggle_bone");
  if (a == b) throw ConfigError("toggle_bone: a bone needs two different joints");
  auto it = std::find_if(s.edges.begin(), s.edges.end(), [&](const std::pair<int, int>& e) {
    return (e.first == a && e.second == b) || (e.first == b && e.second == a);
  });
  if (it != s.edges.end()) {
    s.edges.erase(it);
    return false;
  }
  s.edges.emplace_back(a, b);
  return true;
}

void mirror(world::Skeleton& s) {
  for (world::Joint& j : s.joints) j.x = 1.0 - j.x;
  for (size_t i = 0; i < s.joints.size(); ++i) {
    const std::string& n = s.joints[i].name;
    if (n.rfind("left_", 0) != 0) continue;
    const int other = s.find("right_" + n.substr(5));
    if (other < 0) continue;
    world::Joint& l = s.joints[i];
    world::Joint& r = s.joints[other];
    std::swap(l.x, r.x);
    std::swap(l.y, r.y);
    std::swap(l.z, r.z);
    std::swap(l.confidence, r.confidence);
  }
}

std::vector<SkeletonPreset> skeleton_presets(const std::string& dir) {
  std::vector<SkeletonPreset> out{{"default", world::default_skeleton_2d()}};
  std::error_code ec;
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(dir, ec))
    if (e.path().extension() == ".json") files.push_back(e.path());
  std::sort(files.begin(), files.end());
  for (const fs::path& f : files) {
    try {
      out.push_back({f.stem().string(), world::load_skeleton(f.string())});
    } catch (const std::exception&) {
      // Not a skeleton file: not a preset.
    }
  }
  return out;
}

}  // namespace iris::studio
