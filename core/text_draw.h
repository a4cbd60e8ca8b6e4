#pragma once
// Text on 8-bit images, for labels on contact sheets and showcase grids (prompts under each
// picture). Glyphs come from stb_easy_font (Debian's libstb-dev): a small built-in font drawn
// as axis-aligned rectangles, so rasterising it needs no font file and no anti-aliasing.
// Printable ASCII only; other bytes are skipped. Line height is 12 px at scale 1
// (glyphs are about 7 px tall, 5-6 px wide).
#include <cstdint>
#include <string>
#include <vector>

#include "core/image.h"

namespace iris {

struct Rgb {
  uint8_t r = 0, g = 0, b = 0;
};

constexpr int kTextLineHeight = 12;  // pixels per line at scale 1

// Width in pixels of one line of `text` at `scale` (integer magnification).
int text_width(const std::string& text, int scale = 1);
// Draws `text` with its top-left corner at (x, y); '\n' starts a new line. Pixels outside the
// image are clipped. Returns the y below the last line.
int draw_text(Image& image, int x, int y, const std::string& text, Rgb color, int scale = 1);
// Greedy word wrap to lines no wider than max_width pixels (a word longer than a line is cut).
std::vector<std::string> wrap_text(const std::string& text, int max_width, int scale = 1);

}  // namespace iris
