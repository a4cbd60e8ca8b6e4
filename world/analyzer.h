#pragma once
// The Tinyworld analyzer: reads an RGB image (a render, or a generated image of the same
// world) back into a scene description, and scores it against a target scene.
//
// How it reads an image:
//  1. Background: the named background that best explains the pixels (robust loss), then a
//     per-row estimate of the actual background colour (absorbs colour casts and gradients).
//  2. Foreground = pixels far from their row's background; each classified to the nearest
//     palette colour (8 object colours, 13 limb colours) or "unknown" when nothing is close.
//  3. 8-connected foreground components. Components made mostly of limb colours are the
//     stick figure; the others are objects.
//  4. Each object: colour = the dominant palette colour, with outline/stripe ink (black, or
//     white on black) told apart from the body colour by where it lies (ink hugs the
//     boundary in "outlined", is the minority in "striped"); shape = the silhouette's
//     row-width profile and fill ratio against each shape's ideal profile; size = bounding-box
//     extent relative to a grid cell; position = the grid cell of the bounding-box centre.
//  5. Style: pixelated when colour transitions fall on the block grid; otherwise the ink
//     fractions on the silhouette boundary (outlined) and inside it (striped).
//  6. Stick figure: each limb colour's pixels give a segment (principal axis extremes); the
//     segment ends are assigned to joints by agreement with neighbouring limbs; the head
//     joint is the centre of the head disc, whose colour is the figure's colour.
#include <optional>
#include <string>
#include <vector>

#include "core/image.h"
#include "world/captions.h"
#include "world/scene.h"

namespace iris::world {

struct AnalyzerOptions {
  // A pixel within this RGB distance of its row's background is background.
  double background_distance = 25;
  // Otherwise it is explained as bg + alpha * (palette colour - bg): it is foreground of that
  // colour when alpha >= min_alpha and the residual is <= max(max_residual, 0.3 * |colour - bg|).
  double min_alpha = 0.5;
  double max_residual = 30;
  // Unexplained pixels farther than this from the background are foreground of unknown colour.
  double unknown_distance = 60;
  int min_area = 0;  // components smaller than this are noise (0: width * height / 1000)
};

struct AnalyzedObject {
  Color color = Color::Red;
  Shape shape = Shape::Circle;
  Size size = Size::Medium;
  int cell = 4;
  double x = 0, y = 0;  // bounding-box centre, image-normalised
  double extent = 0;    // larger bounding-box side / cell side
  int area = 0;         // pixels
};

struct JointEstimate {
  double x = 0, y = 0;  // image-normalised
  bool found = false;
};

struct AnalyzedFigure {
  Color color = Color::Red;
  bool color_found = false;
  Side side = Side::Left;
  ArmPose arms = ArmPose::Down;
  LegPose legs = LegPose::Together;
  std::vector<JointEstimate> joints;  // default skeleton order (joint::Count entries)
  int limbs_found = 0;
};

struct AnalyzedScene {
  int width = 0, height = 0;
  Background background = Background::Gray;
  Style style = Style::Flat;
  std::vector<AnalyzedObject> objects;  // reading order: by cell, then x
  std::optional<AnalyzedFigure> figure;
  // Style evidence: share of colour-change energy on the pixelation block grid; ink share on
  // object boundaries and inside objects; ink share on the stripe lattice minus off it.
  double block_alignment = 0, boundary_ink = 0, interior_ink = 0, stripe_contrast = 0;
};

// Works on any size (square images are expected); grey or RGBA input is converted to RGB.
AnalyzedScene analyze_image(const Image& img, const AnalyzerOptions& options = {});
Json analyzed_to_json(const AnalyzedScene& a);

// ---- Scoring -----------------------------------------------------------------------------------

struct Tally {
  int correct = 0, total = 0;
  void add(bool ok) {
    ++total;
    correct += ok ? 1 : 0;
  }
  double rate() const { return total ? double(correct) / total : 0.0; }
  Tally& operator+=(const Tally& o) {
    correct += o.correct;
    total += o.total;
    return *this;
  }
};

struct SceneScore {
  // Object attributes, one count per target object (and per attribute described).
  Tally color, shape, size, position;
  // Scene attributes, one count per scene.
  Tally count, style, background;
  // Stick figure: present/absent agreement, colour, arm and leg pose, PCK of the joints.
  Tally figure, figure_color, arms, legs, joints;
  // PCK of the elbows, wrists, knees and ankles alone: the joints a pose moves. Head, neck,
  // shoulders and hips sit where any standing figure's do, so PCK of all joints stays high for
  // a figure in the wrong pose at the right place.
  Tally limb_joints;

  SceneScore& operator+=(const SceneScore& o);
  // Share of correct object attributes (colour, shape, size, position together).
  Tally object_attributes() const;
};

struct ScoreOptions {
  double pck_threshold = 0.1;  // fraction of the image size
  // When given, only the attributes a caption described are scored (see Caption::mentions):
  // objects it did not mention are not required, style/background/figure only if mentioned.
  const Caption* caption = nullptr;
};

// Matches target objects to analysed ones (the assignment with the most agreeing attributes)
// and counts agreements. Unmatched target objects count every attribute as wrong.
SceneScore score_scene(const Scene& target, const AnalyzedScene& got, const ScoreOptions& options = {});

// PCK: joints of `target` (default topology, confidence > 0) whose estimate is found and
// within `threshold` (image-normalised distance) of the truth.
Tally pck(const Skeleton& target, const std::vector<JointEstimate>& got, double threshold = 0.1);
// The same over the joints of type elbow, wrist, knee and ankle only.
Tally pck_limbs(const Skeleton& target, const std::vector<JointEstimate>& got, double threshold = 0.1);

// A fixed-width table, one row per attribute: name, correct/total, percent.
std::string format_score_table(const SceneScore& s);

}  // namespace iris::world
