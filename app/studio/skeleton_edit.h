#pragma once
// Editing operations of the skeleton canvas, on world::Skeleton in image-normalised
// coordinates (x right, y down, [0, 1]). The GUI maps mouse positions to these; the logic is
// tested without a display.
#include <string>
#include <vector>

#include "world/skeleton.h"

namespace iris::studio {

// The joint nearest to (x, y) within `radius` (normalised units), or -1.
int nearest_joint(const world::Skeleton& s, double x, double y, double radius);

// Moves a joint, clamped to [0, 1]; a 3D joint keeps its z.
void move_joint(world::Skeleton& s, int joint, double x, double y);

// Adds a joint named `base`, or base_2, base_3... when taken. Returns its index.
int add_joint(world::Skeleton& s, const std::string& base, double x, double y);

// Removes a joint and every bone touching it (later indices shift down).
void remove_joint(world::Skeleton& s, int joint);

// Adds the bone a-b when absent, removes it when present. Returns true when it now exists.
// Throws ConfigError for a == b or out-of-range indices.
bool toggle_bone(world::Skeleton& s, int a, int b);

// Mirrors the pose left-right: x -> 1 - x, then joints named left_X and right_X exchange
// positions, so the skeleton still faces the viewer with its left arm on the image's right.
void mirror(world::Skeleton& s);

// Preset skeletons: the built-in default pose, then every *.json in `dir` (sorted) that parses.
struct SkeletonPreset {
  std::string name;  // "default" or the file stem
  world::Skeleton skeleton;
};
std::vector<SkeletonPreset> skeleton_presets(const std::string& dir);

}  // namespace iris::studio
