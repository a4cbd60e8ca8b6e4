#include "core/heatmap.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "core/error.h"

namespace iris {

void heat_colour(float v, uint8_t rgb[3]) {
  if (!std::isfinite(v)) v = 0;
  v = std::clamp(v, 0.0f, 1.0f);
  // Control points of the ramp, evenly spaced over [0, 1].
  static const float kStops[5][3] = {{0, 0, 4}, {87, 16, 110}, {188, 55, 84}, {249, 142, 9}, {252, 255, 164}};
  const float x = v * 4.0f;
  const int i = std::min(3, static_cast<int>(x));
  const float t = x - static_cast<float>(i);
  for (int c = 0; c < 3; ++c)
    rgb[c] = static_cast<uint8_t>(std::lround(kStops[i][c] + t * (kStops[i + 1][c] - kStops[i][c])));
}

Image heatmap_overlay(const Image& base, const std::vector<float>& values, int grid_h, int grid_w, int out_w,
                      int out_h, float opacity) {
  if (grid_h < 1 || grid_w < 1)
    throw ShapeError("heat map: grid " + std::to_string(grid_h) + "x" + std::to_string(grid_w) + " is empty");
  if (values.size() != static_cast<size_t>(grid_h) * static_cast<size_t>(grid_w))
    throw ShapeError("heat map: " + std::to_string(values.size()) + " values for a " + std::to_string(grid_h) + "x" +
                     std::to_string(grid_w) + " grid");
  base.check("heat map base image");
  Image picture = to_rgb(base);
  if (out_w > 0 && out_h > 0 && (out_w != picture.width || out_h != picture.height))
    picture = resize_bicubic(picture, out_w, out_h);

  float top = 0;
  for (float v : values)
    if (std::isfinite(v)) top = std::max(top, v);
  auto value = [&](int gy, int gx) {
    const float v = values[static_cast<size_t>(gy) * grid_w + gx];
    return (std::isfinite(v) && v > 0 && top > 0) ? v / top : 0.0f;
  };

  opacity = std::clamp(opacity, 0.0f, 1.0f);
  Image out(picture.width, picture.height, 3);
  for (int y = 0; y < picture.height; ++y) {
    // Bilinear between cell centres (half-pixel aligned, edges clamped).
    const float fy = std::clamp((y + 0.5f) * grid_h / picture.height - 0.5f, 0.0f, static_cast<float>(grid_h - 1));
    const int y0 = static_cast<int>(fy), y1 = std::min(y0 + 1, grid_h - 1);
    const float ty = fy - static_cast<float>(y0);
    for (int x = 0; x < picture.width; ++x) {
      const float fx = std::clamp((x + 0.5f) * grid_w / picture.width - 0.5f, 0.0f, static_cast<float>(grid_w - 1));
      const int x0 = static_cast<int>(fx), x1 = std::min(x0 + 1, grid_w - 1);
      const float tx = fx - static_cast<float>(x0);
      const float v = (1 - ty) * ((1 - tx) * value(y0, x0) + tx * value(y0, x1)) +
                      ty * ((1 - tx) * value(y1, x0) + tx * value(y1, x1));
      uint8_t heat[3];
      heat_colour(v, heat);
      // The picture is dimmed to grey-ish so that the heat reads on any colour.
      const float grey = 0.299f * picture.at(x, y, 0) + 0.587f * picture.at(x, y, 1) + 0.114f * picture.at(x, y, 2);
      for (int c = 0; c < 3; ++c) {
        const float under = 0.5f * picture.at(x, y, c) + 0.5f * grey;
        out.at(x, y, c) = static_cast<uint8_t>(std::lround(std::clamp((1 - opacity) * under + opacity * heat[c], 0.0f, 255.0f)));
      }
    }
  }
  return out;
}

}  // namespace iris
