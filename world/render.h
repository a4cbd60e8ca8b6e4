#pragma once
// Tinyworld renderer: a Scene to an RGB image, without anti-aliasing (every pixel is a palette
// colour, which is what lets the analyzer read renders back exactly).
//
// Styles (pixel sizes at 64x64; they scale with the resolution, see style_metrics):
//   flat       plain fills
//   outlined   a 2-px ink band along the inside of each silhouette (ink = black, white on
//              black objects), so silhouettes and sizes are unchanged
//   striped    diagonal ink stripes ("/", 2 px on, 4 px off) inside each shape
//   pixelated  the flat scene sampled once per 2x2 block (block centres), blocks aligned to
//              the image's top-left corner
// The stick figure: limbs drawn as round-capped lines in their limb colours (vocab.h), then
// the head as a plain disc in the figure's colour (no outline or stripes: at ~6 px across
// they would hide its colour; pixelation applies to the whole image).
#include <vector>

#include "core/image.h"
#include "world/scene.h"

namespace iris::world {

struct StyleMetrics {
  int outline = 2;        // outlined: band width in pixels
  int stripe_period = 6;  // striped: period along x + y
  int stripe_ink = 2;     // striped: ink pixels per period
  int block = 2;          // pixelated: block side in pixels
};
StyleMetrics style_metrics(int resolution);

// Renders a square resolution x resolution RGB image. Throws ConfigError for a resolution
// below 16 or above 4096.
Image render_scene(const Scene& s);

// Which item each pixel of render_scene(s) shows, row-major: -1 the background, k object k,
// s.objects.size() the stick figure (limbs and head). Dense labels for training perception
// (e.g. the VLM's FtZ augmenting encoder). Throws as render_scene.
std::vector<int> render_owner_map(const Scene& s);

// An OpenPose-style pose map of any skeleton (2D, or projected with project_to_2d first):
// black background, each edge in limb_rgb(edge index), joints as small white dots; joints
// with confidence 0 and their edges are left out. Useful to inspect skeleton files.
Image render_skeleton_map(const Skeleton& s, int resolution);

}  // namespace iris::world
