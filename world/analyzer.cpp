#include "world/analyzer.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <functional>

#include "world/render.h"

namespace iris::world {

namespace {

// Pixel classes: 0..7 object colours (Color), 8..20 limb colours, 21 unknown, -1 background.
constexpr int kBg = -1;
constexpr int kFirstLimb = kNumColors;
constexpr int kUnknown = kNumColors + kNumLimbs;
constexpr int kNumClasses = kNumColors + kNumLimbs + 1;

bool is_limb(int c) { return c >= kFirstLimb && c < kFirstLimb + kNumLimbs; }
bool is_object_color(int c) { return c >= 0 && c < kNumColors; }

struct Vec3 {
  double r = 0, g = 0, b = 0;
};
double dist(const Vec3& a, Rgb b) {
  return std::sqrt((a.r - b.r) * (a.r - b.r) + (a.g - b.g) * (a.g - b.g) + (a.b - b.b) * (a.b - b.b));
}
double dist(const Vec3& a, const Vec3& b) {
  return std::sqrt((a.r - b.r) * (a.r - b.r) + (a.g - b.g) * (a.g - b.g) + (a.b - b.b) * (a.b - b.b));
}
Vec3 vec(Rgb c) { return {double(c.r), double(c.g), double(c.b)}; }

// The image as classified pixels.
struct Frame {
  int w = 0, h = 0;
  std::vector<Vec3> px;
  std::vector<int> cls;      // kBg, palette class or kUnknown
  std::vector<float> alpha;  // how much of the pixel is its class colour (vs. background)
  Vec3 at(int x, int y) const { return px[static_cast<size_t>(y) * w + x]; }
};

Background classify_background(const Frame& f) {
  // Robust loss: a pixel far from the background (an object) costs the same for every
  // candidate, so objects cannot outvote the pixels that are background.
  double best = 1e300;
  Background out = Background::Gray;
  for (Background b : all_backgrounds()) {
    double cost = 0;
    for (int y = 0; y < f.h; ++y) {
      const Rgb bg = background_rgb(b, (y + 0.5) / f.h);
      for (int x = 0; x < f.w; ++x) cost += std::min(dist(f.at(x, y), bg), 60.0);
    }
    if (cost < best) best = cost, out = b;
  }
  return out;
}

// Per-row background colour: the named background plus a global colour cast, refined by the
// mean of the row's pixels that are close to it.
std::vector<Vec3> row_backgrounds(const Frame& f, Background b) {
  std::vector<double> dr, dg, db;
  for (int y = 0; y < f.h; ++y) {
    const Rgb e = background_rgb(b, (y + 0.5) / f.h);
    for (int x = 0; x < f.w; ++x) {
      const Vec3 p = f.at(x, y);
      if (dist(p, e) < 70) dr.push_back(p.r - e.r), dg.push_back(p.g - e.g), db.push_back(p.b - e.b);
    }
  }
  auto median = [](std::vector<double>& v) {
    if (v.empty()) return 0.0;
    std::nth_element(v.begin(), v.begin() + v.size() / 2, v.end());
    return v[v.size() / 2];
  };
  const Vec3 cast{median(dr), median(dg), median(db)};
  std::vector<Vec3> rows(f.h);
  for (int y = 0; y < f.h; ++y) {
    const Rgb e = background_rgb(b, (y + 0.5) / f.h);
    const Vec3 ref{e.r + cast.r, e.g + cast.g, e.b + cast.b};
    Vec3 sum;
    int n = 0;
    for (int x = 0; x < f.w; ++x) {
      const Vec3 p = f.at(x, y);
      if (dist(p, ref) < 35) sum.r += p.r, sum.g += p.g, sum.b += p.b, ++n;
    }
    rows[y] = n >= std::max(3, f.w / 10) ? Vec3{sum.r / n, sum.g / n, sum.b / n} : ref;
  }
  return rows;
}

struct Component {
  std::vector<int> pixels;  // y * w + x
  int x0 = 1 << 30, y0 = 1 << 30, x1 = -1, y1 = -1;
  int limb = 0, object = 0;
  int limb_kinds = 0;  // how many different limb colours occur
  int width() const { return x1 - x0 + 1; }
  int height() const { return y1 - y0 + 1; }
};

std::vector<Component> components(const Frame& f, const std::function<bool(int)>& in) {
  std::vector<Component> out;
  std::vector<char> seen(f.cls.size(), 0);
  std::vector<int> stack;
  for (int start = 0; start < static_cast<int>(f.cls.size()); ++start) {
    if (seen[start] || !in(start)) continue;
    Component c;
    stack.assign(1, start);
    seen[start] = 1;
    while (!stack.empty()) {
      const int i = stack.back();
      stack.pop_back();
      c.pixels.push_back(i);
      const int x = i % f.w, y = i / f.w;
      c.x0 = std::min(c.x0, x), c.x1 = std::max(c.x1, x), c.y0 = std::min(c.y0, y), c.y1 = std::max(c.y1, y);
      if (is_limb(f.cls[i])) ++c.limb;
      if (is_object_color(f.cls[i])) ++c.object;
      for (int dy = -1; dy <= 1; ++dy)
        for (int dx = -1; dx <= 1; ++dx) {
          const int nx = x + dx, ny = y + dy;
          if (nx < 0 || ny < 0 || nx >= f.w || ny >= f.h) continue;
          const int j = ny * f.w + nx;
          if (!seen[j] && in(j)) seen[j] = 1, stack.push_back(j);
        }
    }
    std::array<char, kNumLimbs> kinds{};
    for (int i : c.pixels)
      if (is_limb(f.cls[i])) kinds[f.cls[i] - kFirstLimb] = 1;
    for (char k : kinds) c.limb_kinds += k;
    out.push_back(std::move(c));
  }
  return out;
}

// A component's mask in its bounding box (plus a 1-pixel margin) with the chessboard distance
// of every pixel to the outside: 1 on the silhouette's boundary, growing inward.
struct Blob {
  int ox = 0, oy = 0, w = 0, h = 0;  // local grid origin (image coords) and size
  std::vector<int> depth;            // 0 outside
  int d(int x, int y) const {        // image coords
    const int lx = x - ox, ly = y - oy;
    return lx < 0 || ly < 0 || lx >= w || ly >= h ? 0 : depth[ly * w + lx];
  }
};

Blob make_blob(const Component& c, int image_w) {
  Blob b;
  b.ox = c.x0 - 1, b.oy = c.y0 - 1, b.w = c.width() + 2, b.h = c.height() + 2;
  const int inf = 1 << 20;
  b.depth.assign(static_cast<size_t>(b.w) * b.h, 0);
  for (int i : c.pixels) b.depth[(i / image_w - b.oy) * b.w + (i % image_w - b.ox)] = inf;
  // Holes (background enclosed by the component, e.g. a blurred gap between an outline and
  // the body) belong to the silhouette: flood the outside from the margin, fill the rest.
  std::vector<char> outside(b.depth.size(), 0);
  std::vector<int> stack;
  for (int x = 0; x < b.w; ++x) stack.push_back(x), stack.push_back((b.h - 1) * b.w + x);
  for (int y = 0; y < b.h; ++y) stack.push_back(y * b.w), stack.push_back(y * b.w + b.w - 1);
  while (!stack.empty()) {
    const int i = stack.back();
    stack.pop_back();
    if (outside[i] || b.depth[i]) continue;
    outside[i] = 1;
    const int x = i % b.w, y = i / b.w;
    if (x > 0) stack.push_back(i - 1);
    if (x + 1 < b.w) stack.push_back(i + 1);
    if (y > 0) stack.push_back(i - b.w);
    if (y + 1 < b.h) stack.push_back(i + b.w);
  }
  for (size_t i = 0; i < b.depth.size(); ++i)
    if (!outside[i]) b.depth[i] = inf;
  auto at = [&](int x, int y) { return x < 0 || y < 0 || x >= b.w || y >= b.h ? 0 : b.depth[y * b.w + x]; };
  for (int y = 0; y < b.h; ++y)
    for (int x = 0; x < b.w; ++x) {
      int& v = b.depth[y * b.w + x];
      if (v) v = std::min({v, at(x - 1, y) + 1, at(x - 1, y - 1) + 1, at(x, y - 1) + 1, at(x + 1, y - 1) + 1});
    }
  for (int y = b.h - 1; y >= 0; --y)
    for (int x = b.w - 1; x >= 0; --x) {
      int& v = b.depth[y * b.w + x];
      if (v) v = std::min({v, at(x + 1, y) + 1, at(x + 1, y + 1) + 1, at(x, y + 1) + 1, at(x - 1, y + 1) + 1});
    }
  return b;
}

// Colour of a silhouette and the ink evidence of its style.
struct ColorReading {
  Color color = Color::Red;
  bool found = false;
  // Style evidence: pixel counts and summed inkness (0 body colour .. 1 ink colour) in the
  // boundary band (outline width), inside it, and on / off the stripe lattice
  // ((x + y) % period < ink width).
  double boundary = 0, boundary_ink = 0, interior = 0, interior_ink = 0;
  double lattice = 0, lattice_ink = 0, off_lattice = 0, off_lattice_ink = 0;
};

ColorReading read_color(const Frame& f, const Component& c, const Blob& b, const StyleMetrics& m) {
  auto on_lattice = [&](int i) { return (i % f.w + i / f.w) % m.stripe_period < m.stripe_ink; };
  std::array<int, kNumColors> all{}, edge{}, lat{};
  std::array<double, kNumColors> depth{};
  int edge_n = 0, pure = 0;
  for (int i : c.pixels) pure += is_object_color(f.cls[i]) && f.alpha[i] >= 0.75f;
  // Votes come from "pure" pixels (not blended with the background) when there are enough.
  const float min_alpha = pure >= 3 ? 0.75f : 0.f;
  for (int i : c.pixels) {
    const int k = f.cls[i], d = b.d(i % f.w, i / f.w);
    if (d == 1) ++edge_n;
    if (!is_object_color(k) || f.alpha[i] < min_alpha) continue;
    ++all[k];
    depth[k] += d;
    if (d == 1) ++edge[k];
    if (on_lattice(i)) ++lat[k];
  }
  ColorReading r;
  int a = -1, s = -1;  // most and second most frequent object colours
  for (int k = 0; k < kNumColors; ++k) {
    if (all[k] == 0) continue;
    if (a < 0 || all[k] > all[a])
      s = a, a = k;
    else if (s < 0 || all[k] > all[s])
      s = k;
  }
  if (a < 0) return r;
  r.found = true;
  int total = 0;
  for (int k = 0; k < kNumColors; ++k) total += all[k];
  int pick = a;
  // Outline and stripe ink is black (white on black bodies); when the most frequent colour
  // could be the ink of the second one, decide which of the two is the body.
  if (s >= 0 && a == int(ink_color(static_cast<Color>(s)))) {
    const bool significant = all[s] >= std::max(2, total / 12);
    // Stripe ink lies on the lattice; outline ink hugs the boundary with the body inside.
    const bool a_on_lattice = all[a] >= 4 && lat[a] >= 0.8 * all[a];
    const bool s_on_lattice = all[s] >= 4 && lat[s] >= 0.8 * all[s];
    if (significant && a_on_lattice && lat[s] < 0.5 * all[s]) {
      pick = s;  // striped: `a` is the ink
    } else if (significant && s_on_lattice && lat[a] < 0.5 * all[a]) {
      pick = a;  // striped: `s` is the ink
    } else if ((edge_n > 0 && edge[a] >= 0.7 * edge_n && edge[s] <= 0.05 * edge_n) ||
               (depth[s] / all[s] >= depth[a] / all[a] + 0.75 && edge[s] <= 0.15 * edge_n)) {
      pick = s;  // outlined: a ring of `a` with the body inside it (deeper, off the boundary)
    } else if (significant && a == int(Color::Black) && s != int(Color::White)) {
      pick = s;  // a colour with black ink: black is never a colour's ink-covered body
    }
  }
  r.color = static_cast<Color>(pick);
  // Inkness of every pixel: its position on the line from the body colour to the ink colour
  // (continuous, so a blurred outline or stripe still counts in part). Pixels far from that
  // line (blends with the background, other colours) are left out.
  const Vec3 body = vec(color_rgb(r.color)), ink = vec(color_rgb(ink_color(r.color)));
  const Vec3 v{ink.r - body.r, ink.g - body.g, ink.b - body.b};
  const double vv = v.r * v.r + v.g * v.g + v.b * v.b;
  for (int i : c.pixels) {
    const Vec3 p = f.px[i];
    const Vec3 d{p.r - body.r, p.g - body.g, p.b - body.b};
    const double t = std::min(1.0, std::max(0.0, (d.r * v.r + d.g * v.g + d.b * v.b) / vv));
    if (dist(d, Vec3{t * v.r, t * v.g, t * v.b}) > 60) continue;
    const int dep = b.d(i % f.w, i / f.w);
    if (dep <= m.outline)
      r.boundary += 1, r.boundary_ink += t;
    else
      r.interior += 1, r.interior_ink += t;
    if (on_lattice(i))
      r.lattice += 1, r.lattice_ink += t;
    else
      r.off_lattice += 1, r.off_lattice_ink += t;
  }
  return r;
}

// Signed distance of a point (dx, dy) from a shape's centre to its boundary, <= 0 inside:
// the same geometry the renderer uses.
double sdf(Shape s, double dx, double dy, double h) {
  switch (s) {
    case Shape::Circle: return std::sqrt(dx * dx + dy * dy) - h;
    case Shape::Square: return std::max(std::fabs(dx), std::fabs(dy)) - h;
    case Shape::Diamond: return (std::fabs(dx) + std::fabs(dy) - h) * 0.70710678118654752;
    case Shape::Triangle:
      return std::max({dy - h, (-2 * dx - (dy + h)) * 0.4472135955, (2 * dx - (dy + h)) * 0.4472135955});
  }
  return 1;
}

// Most frequent object colour among a component's well-saturated pixels (-1 if none).
int quick_color(const Frame& f, const Component& c) {
  std::array<int, kNumColors> n{};
  for (int i : c.pixels)
    if (is_object_color(f.cls[i]) && f.alpha[i] >= 0.75f) ++n[f.cls[i]];
  const int k = static_cast<int>(std::max_element(n.begin(), n.end()) - n.begin());
  return n[k] > 0 ? k : -1;
}

std::vector<Component> merge_fragments(const Frame& f, const std::vector<const Component*>& parts, double cell_w,
                                       double cell_h) {
  std::vector<Component> out;
  std::vector<int> color;
  for (const Component* c : parts) out.push_back(*c), color.push_back(quick_color(f, *c));
  const int gap = std::max(2, f.w / 24);
  for (bool again = true; again;) {
    again = false;
    for (size_t i = 0; i < out.size() && !again; ++i)
      for (size_t j = i + 1; j < out.size() && !again; ++j) {
        Component &a = out[i], &b = out[j];
        // One inside the other's bounding box: objects never nest, so it is part of it (the
        // body inside a blurred outline).
        const bool nested = (b.x0 >= a.x0 && b.x1 <= a.x1 && b.y0 >= a.y0 && b.y1 <= a.y1) ||
                            (a.x0 >= b.x0 && a.x1 <= b.x1 && a.y0 >= b.y0 && a.y1 <= b.y1);
        if (!nested && (color[i] < 0 || color[i] != color[j])) continue;
        const int gx = std::max(a.x0, b.x0) - std::min(a.x1, b.x1) - 1,
                  gy = std::max(a.y0, b.y0) - std::min(a.y1, b.y1) - 1;
        if (std::max(gx, gy) > gap) continue;
        const int w = std::max(a.x1, b.x1) - std::min(a.x0, b.x0) + 1,
                  h = std::max(a.y1, b.y1) - std::min(a.y0, b.y0) + 1;
        if (w > 0.95 * cell_w || h > 0.95 * cell_h) continue;
        a.pixels.insert(a.pixels.end(), b.pixels.begin(), b.pixels.end());
        a.x0 = std::min(a.x0, b.x0), a.y0 = std::min(a.y0, b.y0), a.x1 = std::max(a.x1, b.x1),
        a.y1 = std::max(a.y1, b.y1);
        a.limb += b.limb, a.object += b.object;
        if (color[i] < 0 || (nested && b.pixels.size() * 2 > a.pixels.size())) color[i] = quick_color(f, a);
        out.erase(out.begin() + j), color.erase(color.begin() + j);
        again = true;
      }
  }
  return out;
}

// Shape by template matching: every shape is rasterised the way the renderer would draw it
// (per pixel, or per block when pixelated) at a few centres and sizes around the silhouette's
// bounding box; the shape with the best intersection-over-union wins. This reads blurred or
// block-quantised silhouettes that simple profile measures confuse (a 4x4-block circle).
Shape read_shape(const Component& c, const Blob& blob, int block) {
  const int margin = 3;
  const int ox = c.x0 - margin, oy = c.y0 - margin, w = c.width() + 2 * margin, h = c.height() + 2 * margin;
  std::vector<char> mask(static_cast<size_t>(w) * h, 0);  // the silhouette, holes filled
  int area = 0;
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) area += mask[y * w + x] = blob.d(ox + x, oy + y) > 0;
  // Sample points of every local pixel (pixel centres, or block centres when pixelated).
  std::vector<double> sx(w), sy(h);
  for (int x = 0; x < w; ++x) {
    const int ix = ox + x;
    sx[x] = block > 1 ? std::floor(double(ix) / block) * block + 0.5 * block : ix + 0.5;
  }
  for (int y = 0; y < h; ++y) {
    const int iy = oy + y;
    sy[y] = block > 1 ? std::floor(double(iy) / block) * block + 0.5 * block : iy + 0.5;
  }
  const double bx = 0.5 * (c.x0 + c.x1 + 1), by = 0.5 * (c.y0 + c.y1 + 1);
  const double half0 = 0.5 * std::max(c.width(), c.height());
  // Pixelated silhouettes start on block edges; object centres sit on pixel centres, half a
  // pixel off the block grid.
  const std::vector<double> offsets =
      block > 1 ? std::vector<double>{-1.5, -0.5, 0.5, 1.5} : std::vector<double>{-0.5, 0, 0.5};
  double best = -1;
  Shape out = Shape::Circle;
  for (Shape s : all_shapes())
    for (double ddx : offsets)
      for (double ddy : offsets)
        for (int k = 0; k < 5; ++k) {
          const double cx = bx + ddx, cy = by + ddy, half = half0 - 0.5 + 0.25 * k;
          int inter = 0, pred = 0;
          for (int y = 0; y < h; ++y)
            for (int x = 0; x < w; ++x)
              if (sdf(s, sx[x] - cx, sy[y] - cy, half) <= 0) {
                ++pred;
                inter += mask[y * w + x];
              }
          const double iou = double(inter) / (pred + area - inter);
          if (iou > best + 1e-12) best = iou, out = s;
        }
  return out;
}

// Share of colour-change energy that falls on the pixelation block grid (0.5 expected for
// unpixelated images with 2-px blocks, 1.0 for our pixelated renders).
double block_alignment(const Frame& f, int block) {
  const double kNoise = 15;  // small differences (noise, gradients) carry no evidence
  double on = 0, off = 0;
  int n_on = 0, n_off = 0;
  for (int y = 0; y < f.h; ++y)
    for (int x = 0; x + 1 < f.w; ++x) {
      const double e = std::max(0.0, dist(f.at(x, y), f.at(x + 1, y)) - kNoise);
      if ((x + 1) % block == 0)
        on += e, ++n_on;
      else
        off += e, ++n_off;
    }
  for (int y = 0; y + 1 < f.h; ++y)
    for (int x = 0; x < f.w; ++x) {
      const double e = std::max(0.0, dist(f.at(x, y), f.at(x, y + 1)) - kNoise);
      if ((y + 1) % block == 0)
        on += e, ++n_on;
      else
        off += e, ++n_off;
    }
  if (!n_on || !n_off) return 0;
  on /= n_on, off /= n_off;
  return on + off > 1e-9 ? on / (on + off) : 0;
}

// ---- Stick figure ------------------------------------------------------------------------------

struct Segment {
  bool ok = false;
  double e[2][2] = {{0, 0}, {0, 0}};  // two ends, pixel coordinates (unordered)
};

// The pixels of one limb colour that form the limb: the largest 8-connected cluster, plus
// clusters within 2 px of it (a limb crossed by another). Blends of two other limb colours at
// a joint can produce this colour elsewhere; those stray clusters are dropped.
std::vector<std::pair<int, int>> main_cluster(const std::vector<std::pair<int, int>>& pts) {
  const size_t n = pts.size();
  std::vector<int> label(n, -1);
  int labels = 0;
  auto near = [&](size_t a, size_t b, int r) {
    return std::abs(pts[a].first - pts[b].first) <= r && std::abs(pts[a].second - pts[b].second) <= r;
  };
  for (size_t i = 0; i < n; ++i) {
    if (label[i] >= 0) continue;
    std::vector<size_t> stack{i};
    label[i] = labels;
    while (!stack.empty()) {
      const size_t a = stack.back();
      stack.pop_back();
      for (size_t b = 0; b < n; ++b)
        if (label[b] < 0 && near(a, b, 1)) label[b] = labels, stack.push_back(b);
    }
    ++labels;
  }
  if (labels <= 1) return pts;
  std::vector<int> size(labels, 0);
  for (int l : label) ++size[l];
  const int main = static_cast<int>(std::max_element(size.begin(), size.end()) - size.begin());
  std::vector<char> keep(labels, 0);
  keep[main] = 1;
  for (size_t a = 0; a < n; ++a)
    if (label[a] != main)
      for (size_t b = 0; b < n && !keep[label[a]]; ++b)
        if (label[b] == main && near(a, b, 3)) keep[label[a]] = 1;
  std::vector<std::pair<int, int>> out;
  for (size_t i = 0; i < n; ++i)
    if (keep[label[i]]) out.push_back(pts[i]);
  return out;
}

Segment fit_segment(const std::vector<std::pair<int, int>>& pts, double half_width) {
  Segment s;
  if (pts.size() < 2) return s;
  double mx = 0, my = 0;
  for (auto [x, y] : pts) mx += x + 0.5, my += y + 0.5;
  mx /= pts.size(), my /= pts.size();
  double sxx = 0, sxy = 0, syy = 0;
  for (auto [x, y] : pts) {
    const double dx = x + 0.5 - mx, dy = y + 0.5 - my;
    sxx += dx * dx, sxy += dx * dy, syy += dy * dy;
  }
  const double theta = 0.5 * std::atan2(2 * sxy, sxx - syy);
  const double ux = std::cos(theta), uy = std::sin(theta);
  double tmin = 1e300, tmax = -1e300;
  for (auto [x, y] : pts) {
    const double t = (x + 0.5 - mx) * ux + (y + 0.5 - my) * uy;
    tmin = std::min(tmin, t), tmax = std::max(tmax, t);
  }
  // Pixel centres reach ~half_width - 0.5 beyond the joints along the limb (round caps).
  const double pull = std::max(0.0, half_width - 0.5);
  if (tmax - tmin > 2 * pull)
    tmin += pull, tmax -= pull;
  else
    tmin = tmax = 0.5 * (tmin + tmax);
  s.e[0][0] = mx + tmin * ux, s.e[0][1] = my + tmin * uy;
  s.e[1][0] = mx + tmax * ux, s.e[1][1] = my + tmax * uy;
  s.ok = true;
  return s;
}

double pdist(const double* a, const double* b) { return std::hypot(a[0] - b[0], a[1] - b[1]); }

struct Head {
  bool found = false;
  double x = 0, y = 0;  // pixels
  ColorReading color;
};

// `objects`: the object components; when the head disc came loose from the body (blur), the
// small object where the head should be is taken as the head and removed from the list.
AnalyzedFigure read_figure(const Frame& f, const std::vector<const Component*>& parts, Head head,
                           std::vector<const Component*>* objects, const StyleMetrics& m) {
  const Skeleton& def = default_skeleton_2d();
  const double hw = limb_half_width(f.w);
  std::vector<std::vector<std::pair<int, int>>> pts(kNumLimbs);
  double cx = 0, cy = 0;
  int n = 0;
  for (const Component* c : parts)
    for (int i : c->pixels)
      if (is_limb(f.cls[i])) {
        pts[f.cls[i] - kFirstLimb].emplace_back(i % f.w, i / f.w);
        cx += i % f.w + 0.5, cy += i / f.w + 0.5, ++n;
      }
  if (n) cx /= n, cy /= n;
  std::vector<Segment> seg(kNumLimbs);
  AnalyzedFigure fig;
  for (int e = 0; e < kNumLimbs; ++e) {
    seg[e] = fit_segment(main_cluster(pts[e]), hw);
    fig.limbs_found += seg[e].ok;
  }

  // Orient each segment: which end is the edge's first joint. An end is close to the ends of
  // the other limbs that share its joint (or to the head disc for the head joint).
  std::vector<std::vector<int>> incident(joint::Count);
  for (int e = 0; e < kNumLimbs; ++e)
    incident[def.edges[e].first].push_back(e), incident[def.edges[e].second].push_back(e);
  auto cost = [&](const double* p, int j, int self) {
    double c = 0;
    if (j == joint::Head && head.found) {
      const double h[2] = {head.x, head.y};
      c += pdist(p, h);
    }
    for (int g : incident[j]) {
      if (g == self || !seg[g].ok) continue;
      c += std::min(pdist(p, seg[g].e[0]), pdist(p, seg[g].e[1]));
    }
    return c;
  };
  std::vector<std::array<double, 2>> sum(joint::Count, {0, 0});
  std::vector<int> cnt(joint::Count, 0);
  for (int e = 0; e < kNumLimbs; ++e) {
    if (!seg[e].ok) continue;
    const int a = def.edges[e].first, b = def.edges[e].second;
    double keep = cost(seg[e].e[0], a, e) + cost(seg[e].e[1], b, e);
    double swap = cost(seg[e].e[1], a, e) + cost(seg[e].e[0], b, e);
    if (keep == 0 && swap == 0) {  // isolated limb: the first joint is the one nearer the body
      const double c[2] = {cx, cy};
      keep = pdist(seg[e].e[0], c), swap = pdist(seg[e].e[1], c);
    }
    const int first = keep <= swap ? 0 : 1;
    sum[a][0] += seg[e].e[first][0], sum[a][1] += seg[e].e[first][1], ++cnt[a];
    sum[b][0] += seg[e].e[1 - first][0], sum[b][1] += seg[e].e[1 - first][1], ++cnt[b];
  }
  fig.joints.assign(joint::Count, {});
  for (int j = 0; j < joint::Count; ++j)
    if (cnt[j]) fig.joints[j] = {sum[j][0] / cnt[j] / f.w, sum[j][1] / cnt[j] / f.h, true};
  if (!head.found && objects && fig.joints[joint::Neck].found) {
    // The head's centre sits ~0.13 figure heights (~0.08 of the image) above the neck.
    const double ex = fig.joints[joint::Neck].x * f.w, ey = (fig.joints[joint::Neck].y - 0.082) * f.h;
    double best_d = 0.06 * f.h;
    auto best = objects->end();
    for (auto it = objects->begin(); it != objects->end(); ++it) {
      const Component& c = **it;
      if (std::max(c.width(), c.height()) > 0.5 * f.w / 3.0) continue;
      double cx = 0, cy = 0;
      for (int i : c.pixels) cx += i % f.w + 0.5, cy += i / f.w + 0.5;
      cx /= c.pixels.size(), cy /= c.pixels.size();
      const double d = std::hypot(cx - ex, cy - ey);
      if (d < best_d) best_d = d, best = it, head.x = cx, head.y = cy;
    }
    if (best != objects->end()) {
      head.found = true;
      head.color = read_color(f, **best, make_blob(**best, f.w), m);
      objects->erase(best);
    }
  }
  if (head.found) fig.joints[joint::Head] = {head.x / f.w, head.y / f.h, true};
  fig.color_found = head.found && head.color.found;
  if (fig.color_found) fig.color = head.color.color;

  // Pose from joint geometry, in units of the figure's height.
  const auto& J = fig.joints;
  const double neck_x = J[joint::Neck].found ? J[joint::Neck].x : cx / f.w;
  fig.side = neck_x < 0.5 ? Side::Left : Side::Right;
  double hf = 0.6;
  if (J[joint::Head].found && (J[joint::LeftAnkle].found || J[joint::RightAnkle].found)) {
    const double ay = J[joint::LeftAnkle].found && J[joint::RightAnkle].found
                          ? 0.5 * (J[joint::LeftAnkle].y + J[joint::RightAnkle].y)
                          : (J[joint::LeftAnkle].found ? J[joint::LeftAnkle].y : J[joint::RightAnkle].y);
    hf = std::max(0.1, (ay - J[joint::Head].y) / 0.88);
  }
  enum ArmState { Down, Up, Out };
  auto arm = [&](int shoulder, int wrist) {
    if (!J[shoulder].found || !J[wrist].found) return Down;
    if (J[wrist].y < J[shoulder].y - 0.1 * hf) return Up;
    if (std::fabs(J[wrist].x - J[shoulder].x) > 0.2 * hf && J[wrist].y < J[shoulder].y + 0.15 * hf) return Out;
    return Down;
  };
  const ArmState r = arm(joint::RightShoulder, joint::RightWrist), l = arm(joint::LeftShoulder, joint::LeftWrist);
  if (r == Up && l == Up)
    fig.arms = ArmPose::BothUp;
  else if (l == Up)
    fig.arms = ArmPose::LeftUp;
  else if (r == Up)
    fig.arms = ArmPose::RightUp;
  else if (l == Out && r == Out)
    fig.arms = ArmPose::Out;
  else
    fig.arms = ArmPose::Down;
  if (J[joint::LeftAnkle].found && J[joint::RightAnkle].found)
    fig.legs =
        std::fabs(J[joint::LeftAnkle].x - J[joint::RightAnkle].x) > 0.24 * hf ? LegPose::Apart : LegPose::Together;
  return fig;
}

}  // namespace

AnalyzedScene analyze_image(const Image& input, const AnalyzerOptions& opt) {
  const Image img = input.channels == 3 ? input : to_rgb(input);
  img.check("analyze_image");
  AnalyzedScene out;
  out.width = img.width, out.height = img.height;
  if (img.empty()) return out;

  Frame f;
  f.w = img.width, f.h = img.height;
  f.px.resize(static_cast<size_t>(f.w) * f.h);
  for (size_t i = 0; i < f.px.size(); ++i)
    f.px[i] = {double(img.pixels[i * 3]), double(img.pixels[i * 3 + 1]), double(img.pixels[i * 3 + 2])};

  out.background = classify_background(f);
  const std::vector<Vec3> rowbg = row_backgrounds(f, out.background);
  std::vector<Vec3> palette;
  for (Color c : all_colors()) palette.push_back(vec(color_rgb(c)));
  for (int e = 0; e < kNumLimbs; ++e) palette.push_back(vec(limb_rgb(e)));
  // Each pixel is explained as a blend of its row's background and one palette colour
  // (p = bg + alpha * (colour - bg)): blurred edges and faded colours keep their class
  // instead of jumping to whichever palette entry happens to be nearest.
  f.cls.assign(f.px.size(), kBg);
  f.alpha.assign(f.px.size(), 0.f);
  for (int y = 0; y < f.h; ++y)
    for (int x = 0; x < f.w; ++x) {
      const size_t i = static_cast<size_t>(y) * f.w + x;
      const Vec3 bg = rowbg[y];
      const Vec3 d{f.px[i].r - bg.r, f.px[i].g - bg.g, f.px[i].b - bg.b};
      const double dn = std::sqrt(d.r * d.r + d.g * d.g + d.b * d.b);
      if (dn <= opt.background_distance) continue;
      int best = -1;
      double best_score = 1e300, best_res = 0, best_alpha = 0, best_len = 0;
      for (int k = 0; k < kNumClasses - 1; ++k) {
        const Vec3 v{palette[k].r - bg.r, palette[k].g - bg.g, palette[k].b - bg.b};
        const double vv = v.r * v.r + v.g * v.g + v.b * v.b;
        if (vv < 1) continue;
        const double a = std::min(1.0, (d.r * v.r + d.g * v.g + d.b * v.b) / vv);
        if (a < 0.3) continue;
        const double res = dist(d, Vec3{a * v.r, a * v.g, a * v.b});
        // A full-strength match beats a partial blend that fits as well.
        if (res + 10 * (1 - a) < best_score)
          best_score = res + 10 * (1 - a), best_res = res, best = k, best_alpha = a, best_len = std::sqrt(vv);
      }
      if (best >= 0 && best_alpha >= opt.min_alpha && best_res <= std::max(opt.max_residual, 0.3 * best_len)) {
        f.cls[i] = best;
        f.alpha[i] = static_cast<float>(best_alpha);
      } else if (dn > opt.unknown_distance) {
        f.cls[i] = kUnknown;  // clearly not background, but no palette colour explains it
        f.alpha[i] = 1.f;
      }
    }

  const int res = std::max(f.w, f.h);
  const StyleMetrics m = style_metrics(res);
  const int min_area = opt.min_area > 0 ? opt.min_area : std::max(3, f.w * f.h / 1000);
  std::vector<Component> comps = components(f, [&](int i) { return f.cls[i] != kBg; });

  std::vector<const Component*> figure_parts;
  std::vector<const Component*> object_parts;
  for (const auto& c : comps) {
    if (c.limb >= 0.25 * c.pixels.size() && c.limb_kinds >= 2) {
      if (static_cast<int>(c.pixels.size()) >= min_area) figure_parts.push_back(&c);
    } else if (c.object > 0) {
      object_parts.push_back(&c);  // small ones too: they may be pieces of a larger object
    }
  }

  // A stick figure has many limbs; a few limb-coloured pixels where blurred colours meet at
  // an object's edge are not one. Such components go back to the objects.
  {
    std::array<int, kNumLimbs> limb_pixels{};
    for (const Component* c : figure_parts)
      for (int i : c->pixels)
        if (is_limb(f.cls[i])) ++limb_pixels[f.cls[i] - kFirstLimb];
    int limbs = 0;
    for (int n : limb_pixels) limbs += n >= 3;
    if (limbs < 4) {
      for (const Component* c : figure_parts) object_parts.push_back(c);
      figure_parts.clear();
    }
  }

  // Blur can cut an object in pieces (a white body's black stripe blurs to background grey):
  // pieces of one colour that nearly touch and together still fit in a grid cell are merged.
  std::vector<Component> merged = merge_fragments(f, object_parts, f.w / 3.0, f.h / 3.0);
  object_parts.clear();
  for (const auto& c : merged)
    if (static_cast<int>(c.pixels.size()) >= min_area) object_parts.push_back(&c);

  // Head of the figure: the largest blob of object colours inside the figure's components.
  Head head;
  std::vector<Component> head_blobs;
  if (!figure_parts.empty()) {
    std::vector<char> in_fig(f.cls.size(), 0);
    for (const Component* c : figure_parts)
      for (int i : c->pixels) in_fig[i] = 1;
    head_blobs = components(f, [&](int i) { return in_fig[i] && is_object_color(f.cls[i]); });
    const Component* best = nullptr;
    for (const auto& b : head_blobs)
      if (!best || b.pixels.size() > best->pixels.size()) best = &b;
    if (best && static_cast<int>(best->pixels.size()) >= min_area) {
      head.found = true;
      for (int i : best->pixels) head.x += i % f.w + 0.5, head.y += i / f.w + 0.5;
      head.x /= best->pixels.size(), head.y /= best->pixels.size();
      head.color = read_color(f, *best, make_blob(*best, f.w), m);
    }
  }

  if (!figure_parts.empty()) out.figure = read_figure(f, figure_parts, head, &object_parts, m);

  // Pixelation is read first: shapes are matched as the renderer would have sampled them.
  out.block_alignment = block_alignment(f, m.block);
  const bool pixelated = out.block_alignment > 0.66;
  const double cell_w = f.w / 3.0, cell_h = f.h / 3.0;
  ColorReading ev;  // style evidence summed over objects
  for (const Component* c : object_parts) {
    const Blob blob = make_blob(*c, f.w);
    const ColorReading col = read_color(f, *c, blob, m);
    if (!col.found) continue;  // no object colour at all (stray limb or unknown pixels)
    AnalyzedObject o;
    o.color = col.color;
    o.shape = read_shape(*c, blob, pixelated ? m.block : 1);
    o.area = static_cast<int>(c->pixels.size());
    o.x = (c->x0 + c->x1 + 1) * 0.5 / f.w;
    o.y = (c->y0 + c->y1 + 1) * 0.5 / f.h;
    o.extent = std::max(c->width() / cell_w, c->height() / cell_h);
    // Thresholds halfway between the nominal extents (0.42 / 0.62 / 0.82 of a cell).
    o.size = o.extent < 0.52 ? Size::Small : o.extent < 0.72 ? Size::Medium : Size::Large;
    const int col_i = std::min(2, std::max(0, static_cast<int>(o.x * 3))),
              row_i = std::min(2, std::max(0, static_cast<int>(o.y * 3)));
    o.cell = row_i * 3 + col_i;
    out.objects.push_back(o);
    ev.boundary += col.boundary, ev.boundary_ink += col.boundary_ink;
    ev.interior += col.interior, ev.interior_ink += col.interior_ink;
    ev.lattice += col.lattice, ev.lattice_ink += col.lattice_ink;
    ev.off_lattice += col.off_lattice, ev.off_lattice_ink += col.off_lattice_ink;
  }
  std::stable_sort(out.objects.begin(), out.objects.end(), [](const AnalyzedObject& a, const AnalyzedObject& b) {
    return a.cell != b.cell ? a.cell < b.cell : a.x < b.x;
  });

  // Style: pixelation first (it hides the ink evidence), then ink inside vs on the boundary.
  auto ratio = [](double a, double b) { return b > 0 ? a / b : 0.0; };
  out.boundary_ink = ratio(ev.boundary_ink, ev.boundary);
  out.interior_ink = ratio(ev.interior_ink, ev.interior);
  // Stripes put ink exactly on the lattice; outlines put it on the boundary regardless.
  out.stripe_contrast = ratio(ev.lattice_ink, ev.lattice) - ratio(ev.off_lattice_ink, ev.off_lattice);
  // Thresholds sit between the clean renders' values (flat 0, outlined ~0.9 on the boundary,
  // striped ~1 lattice contrast) and what blur (sigma 1 px) leaves of them.
  if (pixelated)
    out.style = Style::Pixelated;
  else if (out.stripe_contrast > 0.2 && out.stripe_contrast > out.boundary_ink - out.interior_ink)
    out.style = Style::Striped;
  else if (out.boundary_ink > 0.3 && out.boundary_ink > out.interior_ink + 0.2)
    out.style = Style::Outlined;
  else if (out.interior_ink > 0.15)
    out.style = Style::Striped;
  else
    out.style = Style::Flat;

  return out;
}

Json analyzed_to_json(const AnalyzedScene& a) {
  Json objects = Json::array();
  for (const auto& o : a.objects)
    objects.push_back({{"shape", name(o.shape)},
                       {"color", name(o.color)},
                       {"size", name(o.size)},
                       {"position", cell_name(o.cell)},
                       {"x", o.x},
                       {"y", o.y},
                       {"extent", o.extent},
                       {"area", o.area}});
  Json j = {{"width", a.width},
            {"height", a.height},
            {"background", name(a.background)},
            {"style", name(a.style)},
            {"objects", objects},
            {"evidence",
             {{"block_alignment", a.block_alignment},
              {"boundary_ink", a.boundary_ink},
              {"interior_ink", a.interior_ink},
              {"stripe_contrast", a.stripe_contrast}}}};
  if (a.figure) {
    const AnalyzedFigure& f = *a.figure;
    Json joints = Json::array();
    const Skeleton& def = default_skeleton_2d();
    for (size_t i = 0; i < f.joints.size(); ++i) {
      Json jj = {{"name", def.joints[i].name}, {"found", f.joints[i].found}};
      if (f.joints[i].found) jj["xy"] = {f.joints[i].x, f.joints[i].y};
      joints.push_back(jj);
    }
    j["figure"] = {{"color", f.color_found ? Json(name(f.color)) : Json(nullptr)},
                   {"side", name(f.side)},
                   {"arms", name(f.arms)},
                   {"legs", name(f.legs)},
                   {"limbs_found", f.limbs_found},
                   {"joints", joints}};
  }
  return j;
}

// ---- Scoring -----------------------------------------------------------------------------------

SceneScore& SceneScore::operator+=(const SceneScore& o) {
  color += o.color, shape += o.shape, size += o.size, position += o.position;
  count += o.count, style += o.style, background += o.background;
  figure += o.figure, figure_color += o.figure_color, arms += o.arms, legs += o.legs, joints += o.joints;
  limb_joints += o.limb_joints;
  return *this;
}

Tally SceneScore::object_attributes() const {
  Tally t = color;
  t += shape, t += size, t += position;
  return t;
}

namespace {
Tally pck_of(const Skeleton& target, const std::vector<JointEstimate>& got, double threshold, bool limbs_only) {
  Tally t;
  for (size_t i = 0; i < target.joints.size(); ++i) {
    if (target.joints[i].confidence <= 0) continue;
    const std::string& type = target.joints[i].type;
    if (limbs_only && type != "elbow" && type != "wrist" && type != "knee" && type != "ankle") continue;
    const bool ok = i < got.size() && got[i].found &&
                    std::hypot(got[i].x - target.joints[i].x, got[i].y - target.joints[i].y) <= threshold;
    t.add(ok);
  }
  return t;
}
}  // namespace

Tally pck(const Skeleton& target, const std::vector<JointEstimate>& got, double threshold) {
  return pck_of(target, got, threshold, false);
}

Tally pck_limbs(const Skeleton& target, const std::vector<JointEstimate>& got, double threshold) {
  return pck_of(target, got, threshold, true);
}

SceneScore score_scene(const Scene& target, const AnalyzedScene& got, const ScoreOptions& opt) {
  SceneScore sc;
  std::vector<ObjectMention> wanted;
  if (opt.caption) {
    wanted = opt.caption->mentions;
  } else {
    for (size_t i = 0; i < target.objects.size(); ++i) wanted.push_back({static_cast<int>(i), true, true, true, true});
  }
  // Candidates: the largest analysed objects (bounded so the search stays small).
  std::vector<const AnalyzedObject*> cand;
  for (const auto& o : got.objects) cand.push_back(&o);
  std::stable_sort(cand.begin(), cand.end(), [](auto* a, auto* b) { return a->area > b->area; });
  if (cand.size() > 8) cand.resize(8);

  auto agree = [&](const ObjectMention& m, const AnalyzedObject* g) {
    const Object& t = target.objects[m.object];
    // Position weighs slightly more so ties go to the object in the right cell.
    return (m.color && g->color == t.color) + (m.shape && g->shape == t.shape) + (m.size && g->size == t.size) +
           (m.position && g->cell == t.cell) * 1.01;
  };
  std::vector<int> assign(wanted.size(), -1), best_assign(wanted.size(), -1);
  std::vector<char> used(cand.size(), 0);
  double best = -1;
  if (wanted.size() <= 5) {
    std::function<void(size_t, double)> search = [&](size_t k, double acc) {
      if (k == wanted.size()) {
        if (acc > best) best = acc, best_assign = assign;
        return;
      }
      assign[k] = -1;
      search(k + 1, acc);
      for (size_t g = 0; g < cand.size(); ++g) {
        if (used[g]) continue;
        used[g] = 1, assign[k] = static_cast<int>(g);
        search(k + 1, acc + agree(wanted[k], cand[g]));
        used[g] = 0, assign[k] = -1;
      }
    };
    search(0, 0);
  } else {  // many objects: greedy, best pair first
    for (size_t k = 0; k < wanted.size(); ++k) {
      double bv = 0;
      int bg = -1;
      for (size_t g = 0; g < cand.size(); ++g)
        if (!used[g] && agree(wanted[k], cand[g]) > bv) bv = agree(wanted[k], cand[g]), bg = static_cast<int>(g);
      best_assign[k] = bg;
      if (bg >= 0) used[bg] = 1;
    }
  }
  for (size_t k = 0; k < wanted.size(); ++k) {
    const ObjectMention& m = wanted[k];
    const Object& t = target.objects[m.object];
    const AnalyzedObject* g = best_assign[k] >= 0 ? cand[best_assign[k]] : nullptr;
    if (m.color) sc.color.add(g && g->color == t.color);
    if (m.shape) sc.shape.add(g && g->shape == t.shape);
    if (m.size) sc.size.add(g && g->size == t.size);
    if (m.position) sc.position.add(g && g->cell == t.cell);
  }
  const Caption* cap = opt.caption;
  if (!cap || cap->count) sc.count.add(got.objects.size() == target.objects.size());
  if (!cap || cap->style) sc.style.add(got.style == target.style);
  if (!cap || cap->background) sc.background.add(got.background == target.background);

  const bool want_fig = !cap || cap->figure;
  if (want_fig) sc.figure.add(got.figure.has_value() == target.figure.has_value());
  if (target.figure && want_fig) {
    const Figure& tf = *target.figure;
    const AnalyzedFigure* gf = got.figure ? &*got.figure : nullptr;
    if (!cap || cap->figure_color) sc.figure_color.add(gf && gf->color_found && gf->color == tf.color);
    if (!cap || cap->arms) sc.arms.add(gf && gf->arms == tf.arms);
    if (!cap || cap->legs) sc.legs.add(gf && gf->legs == tf.legs);
  }
  if (target.figure) {
    const std::vector<JointEstimate> none;
    const std::vector<JointEstimate>& found = got.figure ? got.figure->joints : none;
    sc.joints += pck(target.figure->skeleton, found, opt.pck_threshold);
    sc.limb_joints += pck_limbs(target.figure->skeleton, found, opt.pck_threshold);
  }
  return sc;
}

std::string format_score_table(const SceneScore& s) {
  std::string out = "attribute        correct / total   accuracy\n";
  auto row = [&](const char* name, const Tally& t) {
    if (!t.total) return;
    char buf[128];
    std::snprintf(buf, sizeof buf, "%-16s %7d / %-7d %7.2f%%\n", name, t.correct, t.total, 100.0 * t.rate());
    out += buf;
  };
  row("color", s.color);
  row("shape", s.shape);
  row("size", s.size);
  row("position", s.position);
  row("count", s.count);
  row("style", s.style);
  row("background", s.background);
  row("figure", s.figure);
  row("figure color", s.figure_color);
  row("arms", s.arms);
  row("legs", s.legs);
  row("joints (PCK)", s.joints);
  row("limb joints", s.limb_joints);
  row("objects (all)", s.object_attributes());
  return out;
}

}  // namespace iris::world
