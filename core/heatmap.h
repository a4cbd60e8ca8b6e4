#pragma once
// A heat map over an image: a coarse grid of non-negative values (per image patch, say) scaled
// to [0, 1] by its maximum, upsampled bilinearly to the picture, coloured (black - purple -
// red - yellow, as "inferno") and blended over a dimmed copy of the picture. What `iris ask
// --saliency` writes and the studio shows.
#include <vector>

#include "core/image.h"

namespace iris {

// RGB of a value in [0, 1] (clamped) on the heat colour ramp.
void heat_colour(float v, uint8_t rgb[3]);

// values: grid_h * grid_w, row-major (row 0 at the top). The result is `base` (RGB, resized
// bicubically to out_w x out_h when those are > 0) with the heat blended over it at `opacity`.
// ShapeError when the grid is empty or values.size() != grid_h * grid_w; negative or
// non-finite values count as 0, an all-zero grid gives a cold map.
Image heatmap_overlay(const Image& base, const std::vector<float>& values, int grid_h, int grid_w, int out_w = 0,
                      int out_h = 0, float opacity = 0.6f);

}  // namespace iris
