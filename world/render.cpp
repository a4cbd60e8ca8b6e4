#include "world/render.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace iris::world {

StyleMetrics style_metrics(int resolution) {
  StyleMetrics m;
  m.outline = std::max(1, static_cast<int>(std::lround(resolution / 40.0)));
  m.stripe_period = std::max(3, static_cast<int>(std::lround(6.0 * resolution / 64.0)));
  m.stripe_ink = std::max(1, static_cast<int>(std::lround(2.0 * resolution / 64.0)));
  m.block = std::max(2, static_cast<int>(std::lround(resolution / 32.0)));
  return m;
}

namespace {

// Signed distance (pixels) from a point at (dx, dy) relative to the shape's centre to its
// boundary: <= 0 inside. Exact inside every shape (what the outline band needs).
double shape_sdf(Shape s, double dx, double dy, double h) {
  switch (s) {
    case Shape::Circle: return std::sqrt(dx * dx + dy * dy) - h;
    case Shape::Square: return std::max(std::fabs(dx), std::fabs(dy)) - h;
    case Shape::Diamond: return (std::fabs(dx) + std::fabs(dy) - h) * 0.70710678118654752;
    case Shape::Triangle: {
      // Apex (0, -h), base corners (+-h, h): base == height == 2h.
      const double k = 0.44721359549995794;  // 1 / sqrt(5)
      return std::max({dy - h, (-2 * dx - (dy + h)) * k, (2 * dx - (dy + h)) * k});
    }
  }
  return 1;
}

// Squared distance from p to segment ab.
double segment_dist2(double px, double py, double ax, double ay, double bx, double by) {
  const double vx = bx - ax, vy = by - ay, wx = px - ax, wy = py - ay;
  const double len2 = vx * vx + vy * vy;
  double t = len2 > 0 ? (wx * vx + wy * vy) / len2 : 0;
  t = std::min(1.0, std::max(0.0, t));
  const double ex = wx - t * vx, ey = wy - t * vy;
  return ex * ex + ey * ey;
}

struct Painter {
  const Scene& scene;
  StyleMetrics m;
  int res;

  // Colour of a filled, styled shape at integer pixel (x, y) given its signed distance.
  Rgb styled(Color c, double sd, int x, int y) const {
    if (scene.style == Style::Outlined && sd > -m.outline) return color_rgb(ink_color(c));
    if (scene.style == Style::Striped && (x + y) % m.stripe_period < m.stripe_ink) return color_rgb(ink_color(c));
    return color_rgb(c);
  }

  // What is drawn at continuous point (px, py); later items paint over earlier ones (objects in
  // order, then the figure's limbs, then its head).
  struct Hit {
    int item = -1;     // -1 the background, k < number of objects object k, else the figure
    double sd = 0;     // an object's signed distance (for its styling)
    int limb = -1;     // the figure: the limb's edge index, -1 its head
  };
  Hit hit(double px, double py) const {
    Hit h;
    for (size_t k = 0; k < scene.objects.size(); ++k) {
      const ObjectGeometry g = object_geometry(scene.objects[k], res);
      if (std::fabs(px - g.cx) > g.half + 1 || std::fabs(py - g.cy) > g.half + 1) continue;
      const double sd = shape_sdf(scene.objects[k].shape, px - g.cx, py - g.cy, g.half);
      if (sd <= 0) h = {static_cast<int>(k), sd, -1};
    }
    if (scene.figure) {
      const int figure = static_cast<int>(scene.objects.size());
      const Skeleton& sk = scene.figure->skeleton;
      const double hw = limb_half_width(res);
      for (size_t e = 0; e < sk.edges.size(); ++e) {
        const Joint& a = sk.joints[sk.edges[e].first];
        const Joint& b = sk.joints[sk.edges[e].second];
        if (a.confidence <= 0 || b.confidence <= 0) continue;
        if (segment_dist2(px, py, a.x * res, a.y * res, b.x * res, b.y * res) <= hw * hw)
          h = {figure, 0, static_cast<int>(e)};
      }
      const int head = sk.find("head");
      if (head >= 0 && sk.joints[head].confidence > 0) {
        const double r = head_radius(scene.figure->height) * res;
        const double dx = px - sk.joints[head].x * res, dy = py - sk.joints[head].y * res;
        if (std::sqrt(dx * dx + dy * dy) - r <= 0) h = {figure, 0, -1};
      }
    }
    return h;
  }

  // Colour at continuous point (px, py); (x, y) is the pixel it lands in (for stripes).
  Rgb at(double px, double py, int x, int y) const {
    const Hit h = hit(px, py);
    if (h.item < 0) return background_rgb(scene.background, (y + 0.5) / res);
    if (h.item < static_cast<int>(scene.objects.size()))
      return styled(scene.objects[static_cast<size_t>(h.item)].color, h.sd, x, y);
    return h.limb >= 0 ? limb_rgb(h.limb) : color_rgb(scene.figure->color);
  }
};

void put(Image& img, int x, int y, Rgb c) {
  uint8_t* p = &img.pixels[(static_cast<size_t>(y) * img.width + x) * 3];
  p[0] = c.r;
  p[1] = c.g;
  p[2] = c.b;
}

void check_resolution(int res) {
  if (res < 16 || res > 4096) throw ConfigError("render: resolution " + std::to_string(res) + " outside 16..4096");
}

}  // namespace

Image render_scene(const Scene& s) {
  check_resolution(s.resolution);
  const int res = s.resolution;
  Image img(res, res, 3);
  Painter painter{s, style_metrics(res), res};
  if (s.style == Style::Pixelated) {
    // One sample per block, at the block's centre; a partial last block (res % block) is
    // sampled at the centre of its full-size extent.
    const int b = painter.m.block;
    for (int by = 0; by < res; by += b)
      for (int bx = 0; bx < res; bx += b) {
        const Rgb c = painter.at(bx + 0.5 * b, by + 0.5 * b, bx, by);
        for (int y = by; y < std::min(res, by + b); ++y)
          for (int x = bx; x < std::min(res, bx + b); ++x) put(img, x, y, c);
      }
  } else {
    for (int y = 0; y < res; ++y)
      for (int x = 0; x < res; ++x) put(img, x, y, painter.at(x + 0.5, y + 0.5, x, y));
  }
  return img;
}

std::vector<int> render_owner_map(const Scene& s) {
  check_resolution(s.resolution);
  const int res = s.resolution;
  Painter painter{s, style_metrics(res), res};
  std::vector<int> map(static_cast<size_t>(res) * res);
  const bool blocks = s.style == Style::Pixelated;
  const int b = painter.m.block;
  for (int y = 0; y < res; ++y)
    for (int x = 0; x < res; ++x) {
      // Pixelated renders sample one point per block (render_scene), so the map does too.
      const double px = blocks ? (x / b) * b + 0.5 * b : x + 0.5, py = blocks ? (y / b) * b + 0.5 * b : y + 0.5;
      map[static_cast<size_t>(y) * res + x] = painter.hit(px, py).item;
    }
  return map;
}

Image render_skeleton_map(const Skeleton& s, int resolution) {
  check_resolution(resolution);
  const int res = resolution;
  Image img(res, res, 3);
  const double hw = limb_half_width(res), dot = 1.6 * hw;
  for (int y = 0; y < res; ++y)
    for (int x = 0; x < res; ++x) {
      const double px = x + 0.5, py = y + 0.5;
      Rgb c{0, 0, 0};
      for (size_t e = 0; e < s.edges.size(); ++e) {
        const Joint& a = s.joints[s.edges[e].first];
        const Joint& b = s.joints[s.edges[e].second];
        if (a.confidence <= 0 || b.confidence <= 0) continue;
        if (segment_dist2(px, py, a.x * res, a.y * res, b.x * res, b.y * res) <= hw * hw)
          c = limb_rgb(static_cast<int>(e));
      }
      for (const auto& j : s.joints) {
        if (j.confidence <= 0) continue;
        const double dx = px - j.x * res, dy = py - j.y * res;
        if (dx * dx + dy * dy <= dot * dot) c = {255, 255, 255};
      }
      put(img, x, y, c);
    }
  return img;
}

}  // namespace iris::world
