#pragma once
// Tinyworld vocabulary: the closed sets a scene is made of (shapes, colours, sizes, grid cells,
// backgrounds, render styles, stick-figure poses), their English names, and the palette.
//
// The palette is designed for the analyzer: the 8 object colours, the 13 limb colours of the
// stick figure and the backgrounds are far apart in RGB (object colours >= 94 from every
// background value; limb colours >= 59 from each other and from every blend of object, ink and
// background colours), so a pixel can be classified even after blur or a colour cast.
#include <cstdint>
#include <string>
#include <vector>

namespace iris::world {

struct Rgb {
  uint8_t r = 0, g = 0, b = 0;
};
// Euclidean distance in RGB (0..441).
double rgb_distance(Rgb a, Rgb b);

enum class Shape { Circle, Square, Triangle, Diamond };
enum class Color { Red, Green, Blue, Yellow, Purple, Orange, White, Black };
enum class Size { Small, Medium, Large };
enum class Background { Gray, Beige, Slate, GrayGradient };
// Styles change the look, never the content (silhouettes, colours, positions stay readable).
enum class Style { Flat, Outlined, Striped, Pixelated };
// Arm poses name the figure's own left/right: the figure faces the viewer, so its left arm
// is on the image's right side (as in OpenPose and COCO keypoints).
enum class ArmPose { Down, LeftUp, RightUp, BothUp, Out };
enum class LegPose { Together, Apart };
// Which side of the image a stick figure stands on.
enum class Side { Left, Right };

constexpr int kNumShapes = 4, kNumColors = 8, kNumSizes = 3, kNumCells = 9, kNumBackgrounds = 4, kNumStyles = 4,
              kNumArmPoses = 5, kNumLegPoses = 2;

const std::vector<Shape>& all_shapes();
const std::vector<Color>& all_colors();
const std::vector<Size>& all_sizes();
const std::vector<Background>& all_backgrounds();
const std::vector<Style>& all_styles();
const std::vector<ArmPose>& all_arm_poses();
const std::vector<LegPose>& all_leg_poses();

// Names as they appear in captions and JSON: "circle", "red", "small", "gray gradient",
// "outlined", "left up" ("both up", "out", "down"), "apart"/"together", "left"/"right".
const char* name(Shape s);
const char* name(Color c);
const char* name(Size s);
const char* name(Background b);
const char* name(Style s);
const char* name(ArmPose a);
const char* name(LegPose l);
const char* name(Side s);
// Plural noun: "circles", "squares"...
std::string plural(Shape s);

// Inverse of name(); throw ConfigError naming `what` and listing the valid names.
Shape parse_shape(const std::string& s, const std::string& what = "shape");
Color parse_color(const std::string& s, const std::string& what = "color");
Size parse_size(const std::string& s, const std::string& what = "size");
Background parse_background(const std::string& s, const std::string& what = "background");
Style parse_style(const std::string& s, const std::string& what = "style");
ArmPose parse_arm_pose(const std::string& s, const std::string& what = "arms");
LegPose parse_leg_pose(const std::string& s, const std::string& what = "legs");
Side parse_side(const std::string& s, const std::string& what = "side");

// 3x3 grid cells, index = row * 3 + col, row 0 at the top. Names: "top left", "top",
// "top right", "left", "center", "right", "bottom left", "bottom", "bottom right".
const char* cell_name(int cell);
int parse_cell(const std::string& s, const std::string& what = "position");
inline int cell_row(int cell) { return cell / 3; }
inline int cell_col(int cell) { return cell % 3; }

// Palette.
Rgb color_rgb(Color c);
// Background colour at normalised height v (0 top, 1 bottom); plain backgrounds ignore v.
Rgb background_rgb(Background b, double v);
// Limb colours of the stick figure, one per edge of the default skeleton (kNumLimbs).
constexpr int kNumLimbs = 13;
Rgb limb_rgb(int limb);
// The "ink" of outlines and stripes: black, or white on black objects.
Color ink_color(Color object_color);

// Geometry shared by the sampler, the renderer and the analyzer.
// Object extent (bounding-box side) as a fraction of a grid cell.
double size_fraction(Size s);

// Count words for captions and answers: 0 -> "zero", 1 -> "one", ... 9 -> "nine".
const char* count_word(int n);

}  // namespace iris::world
