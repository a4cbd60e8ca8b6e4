#include "core/text_draw.h"

#include <algorithm>
#include <cmath>
#include <sstream>

// stb_easy_font is a header with static functions only; it stays private to this file.
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#endif
#include "stb_easy_font.h"
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif

namespace iris {
namespace {

std::string printable_only(const std::string& text) {
  std::string s;
  s.reserve(text.size());
  for (char c : text)
    if ((c >= 32 && c < 127) || c == '\n') s.push_back(c);
  return s;
}

// stb_easy_font emits 4 vertices per rectangle: x, y, z (floats) and an RGBA colour.
struct EasyFontVertex {
  float x, y, z;
  unsigned char rgba[4];
};

}  // namespace

int text_width(const std::string& text, int scale) {
  std::string s = printable_only(text);
  if (s.empty()) return 0;
  return stb_easy_font_width(s.data()) * std::max(1, scale);
}

int draw_text(Image& image, int x, int y, const std::string& text, Rgb color, int scale) {
  scale = std::max(1, scale);
  std::string s = printable_only(text);
  const int lines = 1 + static_cast<int>(std::count(s.begin(), s.end(), '\n'));
  if (s.empty()) return y + kTextLineHeight * scale;
  // Roughly 30 rectangles per glyph at most; a buffer for the whole string.
  std::vector<EasyFontVertex> verts(s.size() * 4 * 40 + 64);
  const int quads = stb_easy_font_print(0, 0, s.data(), nullptr, verts.data(),
                                        static_cast<int>(verts.size() * sizeof(EasyFontVertex)));
  const uint8_t rgb[3] = {color.r, color.g, color.b};
  for (int q = 0; q < quads; ++q) {
    const EasyFontVertex* v = &verts[static_cast<size_t>(q) * 4];
    // Corners 0 and 2 are opposite; coordinates are whole or half pixels.
    const float fx0 = std::min(v[0].x, v[2].x), fx1 = std::max(v[0].x, v[2].x);
    const float fy0 = std::min(v[0].y, v[2].y), fy1 = std::max(v[0].y, v[2].y);
    const int x0 = x + static_cast<int>(std::lround(fx0 * scale)), x1 = x + static_cast<int>(std::lround(fx1 * scale));
    const int y0 = y + static_cast<int>(std::lround(fy0 * scale)), y1 = y + static_cast<int>(std::lround(fy1 * scale));
    for (int py = std::max(0, y0); py < std::min(image.height, y1); ++py)
      for (int px = std::max(0, x0); px < std::min(image.width, x1); ++px)
        for (int c = 0; c < std::min(3, image.channels); ++c) image.at(px, py, c) = rgb[c];
  }
  return y + lines * kTextLineHeight * scale;
}

std::vector<std::string> wrap_text(const std::string& text, int max_width, int scale) {
  std::vector<std::string> lines;
  std::istringstream words(printable_only(text));
  std::string word, line;
  auto cut_long = [&](std::string& w) {
    // A word wider than a line: emit full-width pieces.
    while (text_width(w, scale) > max_width && w.size() > 1) {
      size_t n = w.size() - 1;
      while (n > 1 && text_width(w.substr(0, n), scale) > max_width) --n;
      lines.push_back(w.substr(0, n));
      w = w.substr(n);
    }
  };
  while (words >> word) {
    const std::string candidate = line.empty() ? word : line + " " + word;
    if (text_width(candidate, scale) <= max_width) {
      line = candidate;
      continue;
    }
    if (!line.empty()) lines.push_back(line);
    cut_long(word);
    line = word;
  }
  if (!line.empty()) lines.push_back(line);
  return lines;
}

}  // namespace iris
