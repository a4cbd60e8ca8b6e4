#include "world/vocab.h"

#include <cmath>

#include "core/error.h"

namespace iris::world {

double rgb_distance(Rgb a, Rgb b) {
  const double dr = double(a.r) - b.r, dg = double(a.g) - b.g, db = double(a.b) - b.b;
  return std::sqrt(dr * dr + dg * dg + db * db);
}

namespace {

template <class E>
std::vector<E> enumerate(int n) {
  std::vector<E> v;
  for (int i = 0; i < n; ++i) v.push_back(static_cast<E>(i));
  return v;
}

const char* const kShapeNames[] = {"circle", "square", "triangle", "diamond"};
const char* const kColorNames[] = {"red", "green", "blue", "yellow", "purple", "orange", "white", "black"};
const char* const kSizeNames[] = {"small", "medium", "large"};
const char* const kBackgroundNames[] = {"gray", "beige", "slate", "gray gradient"};
const char* const kStyleNames[] = {"flat", "outlined", "striped", "pixelated"};
const char* const kArmNames[] = {"down", "left up", "right up", "both up", "out"};
const char* const kLegNames[] = {"together", "apart"};
const char* const kSideNames[] = {"left", "right"};
const char* const kCellNames[] = {"top left", "top",         "top right", "left",        "center",
                                  "right",    "bottom left", "bottom",    "bottom right"};

// Object colours: saturated, far from each other and from every background value.
const Rgb kColorRgb[] = {{220, 40, 40},  {40, 170, 60},  {40, 80, 220},   {240, 220, 40},
                         {150, 60, 190}, {245, 140, 30}, {245, 245, 245}, {25, 25, 25}};

// Limb colours, one per default-skeleton edge (see skeleton.h for the edge order). Chosen by
// a farthest-point search over the RGB cube that keeps every limb colour >= 59 away from the
// other limb colours and from every blend a render or a blurred image can contain: object
// colour to ink, object colour to background, black to white, black to background, another
// limb colour to background (so a blurred red object with black stripes never reads as a
// limb), and keeps object colours off the blends of a limb colour with the background.
const Rgb kLimbRgb[kNumLimbs] = {
    {204, 0, 102},    // neck - head
    {255, 136, 187},  // neck - right shoulder
    {255, 255, 136},  // right upper arm
    {136, 255, 85},   // right forearm
    {136, 153, 255},  // neck - left shoulder
    {51, 153, 238},   // left upper arm
    {0, 0, 153},      // left forearm
    {0, 119, 119},    // neck - right hip
    {17, 204, 204},   // right thigh
    {119, 255, 255},  // right shin
    {68, 136, 0},     // neck - left hip
    {136, 204, 0},    // left thigh
    {51, 255, 153},   // left shin
};

template <class E, size_t N>
E parse_name(const char* const (&names)[N], const std::string& s, const std::string& what) {
  for (size_t i = 0; i < N; ++i)
    if (s == names[i]) return static_cast<E>(i);
  std::string valid;
  for (size_t i = 0; i < N; ++i) valid += std::string(i ? ", " : "") + "\"" + names[i] + "\"";
  throw ConfigError(what + ": unknown value \"" + s + "\" (expected one of " + valid + ")");
}

}  // namespace

const std::vector<Shape>& all_shapes() {
  static const auto v = enumerate<Shape>(kNumShapes);
  return v;
}
const std::vector<Color>& all_colors() {
  static const auto v = enumerate<Color>(kNumColors);
  return v;
}
const std::vector<Size>& all_sizes() {
  static const auto v = enumerate<Size>(kNumSizes);
  return v;
}
const std::vector<Background>& all_backgrounds() {
  static const auto v = enumerate<Background>(kNumBackgrounds);
  return v;
}
const std::vector<Style>& all_styles() {
  static const auto v = enumerate<Style>(kNumStyles);
  return v;
}
const std::vector<ArmPose>& all_arm_poses() {
  static const auto v = enumerate<ArmPose>(kNumArmPoses);
  return v;
}
const std::vector<LegPose>& all_leg_poses() {
  static const auto v = enumerate<LegPose>(kNumLegPoses);
  return v;
}

const char* name(Shape s) { return kShapeNames[int(s)]; }
const char* name(Color c) { return kColorNames[int(c)]; }
const char* name(Size s) { return kSizeNames[int(s)]; }
const char* name(Background b) { return kBackgroundNames[int(b)]; }
const char* name(Style s) { return kStyleNames[int(s)]; }
const char* name(ArmPose a) { return kArmNames[int(a)]; }
const char* name(LegPose l) { return kLegNames[int(l)]; }
const char* name(Side s) { return kSideNames[int(s)]; }
std::string plural(Shape s) { return std::string(name(s)) + "s"; }

Shape parse_shape(const std::string& s, const std::string& what) { return parse_name<Shape>(kShapeNames, s, what); }
Color parse_color(const std::string& s, const std::string& what) { return parse_name<Color>(kColorNames, s, what); }
Size parse_size(const std::string& s, const std::string& what) { return parse_name<Size>(kSizeNames, s, what); }
Background parse_background(const std::string& s, const std::string& what) {
  return parse_name<Background>(kBackgroundNames, s, what);
}
Style parse_style(const std::string& s, const std::string& what) { return parse_name<Style>(kStyleNames, s, what); }
ArmPose parse_arm_pose(const std::string& s, const std::string& what) {
  return parse_name<ArmPose>(kArmNames, s, what);
}
LegPose parse_leg_pose(const std::string& s, const std::string& what) {
  return parse_name<LegPose>(kLegNames, s, what);
}
Side parse_side(const std::string& s, const std::string& what) { return parse_name<Side>(kSideNames, s, what); }

const char* cell_name(int cell) { return cell >= 0 && cell < kNumCells ? kCellNames[cell] : "?"; }
int parse_cell(const std::string& s, const std::string& what) { return parse_name<int>(kCellNames, s, what); }

Rgb color_rgb(Color c) { return kColorRgb[int(c)]; }

Rgb background_rgb(Background b, double v) {
  switch (b) {
    case Background::Gray: return {128, 128, 128};
    case Background::Beige: return {196, 180, 150};
    case Background::Slate: return {90, 105, 125};
    case Background::GrayGradient: {
      // Vertical ramp 100 (top) -> 160 (bottom); rounded per row so rows are uniform.
      v = v < 0 ? 0 : v > 1 ? 1 : v;
      const auto g = static_cast<uint8_t>(std::lround(100.0 + 60.0 * v));
      return {g, g, g};
    }
  }
  return {128, 128, 128};
}

Rgb limb_rgb(int limb) { return kLimbRgb[((limb % kNumLimbs) + kNumLimbs) % kNumLimbs]; }

Color ink_color(Color c) { return c == Color::Black ? Color::White : Color::Black; }

double size_fraction(Size s) {
  // Extents 9 / 13 / 17 pixels at 64x64 (cell = 21.3 px): far enough apart that the analyzer
  // separates them even after 2-px pixelation, and a large object leaves >= 2 px to its
  // neighbour in the next cell.
  static const double f[] = {0.42, 0.62, 0.82};
  return f[int(s)];
}

const char* count_word(int n) {
  static const char* const w[] = {"zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"};
  return n >= 0 && n <= 9 ? w[n] : "many";
}

}  // namespace iris::world
