#pragma once
// Skeletons: the JSON format shared by Tinyworld, the SK-Adapter and its trainer, the default
// 2D human skeleton, and the stick-figure poses Tinyworld draws.
//
// File format (UTF-8 JSON object):
//   {
//     "format": "iris.skeleton",        optional; when present it must be this string
//     "version": 1,                     optional; only 1 is known
//     "joints": [                       required, non-empty, unique names
//       {"name": "neck", "type": "neck", "xy": [0.5, 0.34], "confidence": 1.0},
//       {"name": "head", "xyz": [0.5, 0.27, 0.1]},          3D joint
//       ...
//     ],
//     "edges": [["neck", "head"], ...],  topology: pairs of joint names (no self-loops/duplicates)
//     "camera": {"distance": 2.0}        optional, used to project 3D joints (see Camera)
//   }
// Coordinates are image-normalised: x right and y down in [0, 1] (0,0 = top-left corner);
// z (3D only) is depth behind the image plane in the same units, any finite value with
// distance + z > 0. "type" names the joint kind (head, neck, shoulder, elbow, wrist, hip,
// knee, ankle for the default skeleton); it defaults to the name. "confidence" in [0, 1]
// defaults to 1; a joint with confidence 0 is known to be invisible and is not drawn.
// Malformed input throws FormatError naming the file and the key ("pose.json: joints[3].xy[0]:
// 1.5 is outside [0, 1]").
//
// Default 2D skeleton (14 joints, 13 edges; also assets/skeletons/default_2d.json). Left and
// right are the person's own: facing the viewer, the left arm is on the image's right.
//   joints: 0 head, 1 neck, 2 right_shoulder, 3 right_elbow, 4 right_wrist, 5 left_shoulder,
//           6 left_elbow, 7 left_wrist, 8 right_hip, 9 right_knee, 10 right_ankle, 11 left_hip,
//           12 left_knee, 13 left_ankle
//   edges (= limb colour index, see vocab.h limb_rgb): 0 neck-head, 1 neck-right_shoulder,
//           2 right_shoulder-right_elbow, 3 right_elbow-right_wrist, 4 neck-left_shoulder,
//           5 left_shoulder-left_elbow, 6 left_elbow-left_wrist, 7 neck-right_hip,
//           8 right_hip-right_knee, 9 right_knee-right_ankle, 10 neck-left_hip,
//           11 left_hip-left_knee, 12 left_knee-left_ankle
#include <string>
#include <utility>
#include <vector>

#include "core/json_util.h"
#include "world/vocab.h"

namespace iris::world {

struct Joint {
  std::string name, type;
  double x = 0, y = 0, z = 0;  // image-normalised; z only meaningful when has_z
  bool has_z = false;
  double confidence = 1.0;
};

// A simple pinhole camera looking at the image plane from `distance` in front of it (same
// normalised units): a 3D joint projects to 0.5 + (x - 0.5) * s, 0.5 + (y - 0.5) * s with
// s = distance / (distance + z), so z = 0 stays where it is and farther joints move toward
// the centre.
struct Camera {
  double distance = 2.0;
};

struct Skeleton {
  std::vector<Joint> joints;
  std::vector<std::pair<int, int>> edges;  // indices into joints
  bool has_camera = false;
  Camera camera;

  bool is_3d() const;
  // Index of the joint called `name`, or -1.
  int find(const std::string& name) const;
};

// Parses the format above; `what` (usually the file name) prefixes every error.
Skeleton parse_skeleton(const Json& j, const std::string& what);
// Reads and parses a skeleton file: IoError when unreadable, FormatError otherwise.
Skeleton load_skeleton(const std::string& path);
// Serialises in the same format (coordinates rounded to 1e-4; "type" and "confidence" always
// written, "camera" when set). parse_skeleton(skeleton_to_json(s)) == s up to that rounding.
Json skeleton_to_json(const Skeleton& s);
// The file text: keys in the order above, one joint and one edge per line, and an optional
// "description" string (ignored by the parser).
std::string format_skeleton(const Skeleton& s, const std::string& description = "");
// Writes format_skeleton(s, description) atomically; IoError on failure.
void save_skeleton(const std::string& path, const Skeleton& s, const std::string& description = "");

// Projects 3D joints to 2D with `camera` (or the skeleton's own camera when `camera` is null
// and it has one); with no camera at all, z is dropped (orthographic projection). `message`,
// when given, receives a one-line explanation of what was done ("" for a 2D skeleton), e.g.
// "skeleton has 3D joints and no camera: z dropped (orthographic projection)". Joints that
// land outside [0, 1] are clamped to the border and get confidence 0 (not drawn).
// Throws FormatError when distance + z <= 0 for some joint (behind the camera).
Skeleton project_to_2d(const Skeleton& s, const Camera* camera = nullptr, std::string* message = nullptr);

// ---- The default human skeleton and Tinyworld poses -----------------------------------------

namespace joint {
enum : int {
  Head,
  Neck,
  RightShoulder,
  RightElbow,
  RightWrist,
  LeftShoulder,
  LeftElbow,
  LeftWrist,
  RightHip,
  RightKnee,
  RightAnkle,
  LeftHip,
  LeftKnee,
  LeftAnkle,
  Count
};
}  // namespace joint

// The default topology in the neutral pose (arms down, legs together, figure centred).
const Skeleton& default_skeleton_2d();
// True when `s` has the default skeleton's joint names in order and its edges.
bool has_default_topology(const Skeleton& s);

// Where and how a stick figure stands. Angles are in degrees, measured from straight down,
// positive away from the body; the jitters are added to the pose's own angles.
struct PoseParams {
  ArmPose arms = ArmPose::Down;
  LegPose legs = LegPose::Together;
  double center_x = 0.5;  // image-normalised x of the body's axis
  double top = 0.2;       // y of the top of the head
  double height = 0.66;   // head top to ankles, as a fraction of the image height
  // Jitter: right upper arm, right forearm, left upper arm, left forearm, right leg, left leg.
  double jitter_deg[6] = {0, 0, 0, 0, 0, 0};
};
// The default skeleton posed as `p`. Coordinates are rounded to 1e-4 so that libm differences
// between platforms cannot change a rendered pixel.
Skeleton make_pose(const PoseParams& p);

// Head disc radius and limb half-thickness of a figure, in the same normalised units
// (the renderer scales them by the resolution).
double head_radius(double figure_height);
double limb_half_width(int resolution);  // in pixels

}  // namespace iris::world
