// Text drawing (labels) and the showcase grid layout; render_showcase's error path.
#include <gtest/gtest.h>

#include "core/error.h"
#include "core/text_draw.h"
#include "pipelines/showcase.h"

namespace iris {
namespace {

int count_color(const Image& img, Rgb c, int x0 = 0, int y0 = 0, int x1 = -1, int y1 = -1) {
  if (x1 < 0) x1 = img.width;
  if (y1 < 0) y1 = img.height;
  int n = 0;
  for (int y = y0; y < y1; ++y)
    for (int x = x0; x < x1; ++x)
      n += img.at(x, y, 0) == c.r && img.at(x, y, 1) == c.g && img.at(x, y, 2) == c.b;
  return n;
}

TEST(TextDraw, DrawsInsideItsBoxOnly) {
  Image img(120, 40, 3);
  const Rgb white{255, 255, 255};
  const int w = text_width("Hello 42", 1);
  EXPECT_GT(w, 30);
  EXPECT_LT(w, 60);
  EXPECT_EQ(text_width("Hello 42", 2), 2 * w);
  const int below = draw_text(img, 10, 5, "Hello 42", white);
  EXPECT_EQ(below, 5 + kTextLineHeight);
  const int inside = count_color(img, white, 10, 5, 10 + w + 1, 5 + kTextLineHeight);
  EXPECT_GT(inside, 40);
  EXPECT_EQ(count_color(img, white), inside);  // nothing drawn outside the text box
  // Clipped at the border, no crash; non-ASCII bytes skipped.
  draw_text(img, 110, 35, "clipped \xE2\x96\x81 text", white, 3);
  draw_text(img, -20, -5, "negative", white);
}

TEST(TextDraw, DifferentTextsDiffer) {
  Image a(60, 14, 3), b(60, 14, 3);
  draw_text(a, 0, 0, "circle", Rgb{255, 0, 0});
  draw_text(b, 0, 0, "square", Rgb{255, 0, 0});
  EXPECT_NE(a.pixels, b.pixels);
}

TEST(TextDraw, WrapsToWidth) {
  const std::string s = "a yellow triangle at the bottom right and a green circle at the top left";
  const auto lines = wrap_text(s, 100);
  ASSERT_GT(lines.size(), 2u);
  std::string joined;
  for (const auto& l : lines) {
    EXPECT_LE(text_width(l), 100) << l;
    joined += (joined.empty() ? "" : " ") + l;
  }
  EXPECT_EQ(joined, s);
  // A word longer than a line is cut into pieces that fit.
  for (const auto& l : wrap_text("supercalifragilisticexpialidocious", 40)) EXPECT_LE(text_width(l), 40);
  EXPECT_TRUE(wrap_text("", 40).empty());
}

TEST(Showcase, GridLayout) {
  std::vector<ShowcaseRow> rows(2);
  rows[0].title = "text to image";
  for (int i = 0; i < 3; ++i) {
    ShowcaseCell c;
    c.image = Image(16, 16, 3);
    std::fill(c.image.pixels.begin(), c.image.pixels.end(), uint8_t(200 + i));
    c.label = "cell " + std::to_string(i);
    rows[0].cells.push_back(c);
  }
  ShowcaseCell ref;
  ref.image = Image(16, 16, 3);
  ref.reference = true;
  ref.label = "reference";
  rows[1].cells.push_back(ref);
  const Image grid = showcase_grid(rows, 4);
  // Three 64-px columns plus padding; two rows each taller than a picture.
  EXPECT_GE(grid.width, 3 * 64);
  EXPECT_LT(grid.width, 3 * 64 + 60);
  EXPECT_GE(grid.height, 2 * 64 + 2 * kTextLineHeight);
  // Each picture appears magnified: 64x64 pixels of its fill value.
  for (int i = 0; i < 3; ++i) EXPECT_EQ(count_color(grid, Rgb{uint8_t(200 + i), uint8_t(200 + i), uint8_t(200 + i)}), 64 * 64);
  EXPECT_THROW(showcase_grid({}, 3), ConfigError);
}

TEST(Showcase, MissingModelFolderFailsClearly) {
  ShowcaseOptions o;
  try {
    render_showcase("/nonexistent/pack", o);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/pack"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace iris
