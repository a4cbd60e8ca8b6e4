#include "world/skeleton.h"

#include <cmath>
#include <set>

#include "core/error.h"
#include "core/mmap_file.h"

namespace iris::world {

bool Skeleton::is_3d() const {
  for (const auto& j : joints)
    if (j.has_z) return true;
  return false;
}

int Skeleton::find(const std::string& name) const {
  for (size_t i = 0; i < joints.size(); ++i)
    if (joints[i].name == name) return static_cast<int>(i);
  return -1;
}

namespace {

[[noreturn]] void fail(const std::string& what, const std::string& key, const std::string& msg) {
  throw FormatError(join_context(what, key.empty() ? msg : key + ": " + msg));
}

double number_at(const Json& v, const std::string& what, const std::string& key) {
  if (!v.is_number()) fail(what, key, "expected a number, found " + v.dump());
  const double x = v.get<double>();
  if (!std::isfinite(x)) fail(what, key, "not a finite number");
  return x;
}

std::string fmt(double x) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", x);
  return buf;
}

double round4(double x) { return std::round(x * 10000.0) / 10000.0; }

Joint parse_joint(const Json& j, const std::string& what, const std::string& key) {
  if (!j.is_object()) fail(what, key, "expected an object, found " + j.dump());
  Joint out;
  auto name = j.find("name");
  if (name == j.end() || !name->is_string() || name->get<std::string>().empty())
    fail(what, key + ".name", "missing or not a non-empty string");
  out.name = name->get<std::string>();
  auto type = j.find("type");
  if (type != j.end() && !type->is_null()) {
    if (!type->is_string()) fail(what, key + ".type", "expected a string, found " + type->dump());
    out.type = type->get<std::string>();
  }
  if (out.type.empty()) out.type = out.name;

  const bool has_xy = j.contains("xy"), has_xyz = j.contains("xyz");
  if (has_xy == has_xyz) fail(what, key, "needs exactly one of \"xy\" (2D) or \"xyz\" (3D)");
  const std::string ckey = has_xy ? "xy" : "xyz";
  const Json& c = j.at(ckey);
  const size_t n = has_xy ? 2 : 3;
  if (!c.is_array() || c.size() != n)
    fail(what, key + "." + ckey, "expected an array of " + std::to_string(n) + " numbers, found " + c.dump());
  double v[3] = {0, 0, 0};
  for (size_t i = 0; i < n; ++i) {
    const std::string k = key + "." + ckey + "[" + std::to_string(i) + "]";
    v[i] = number_at(c[i], what, k);
    if (i < 2 && (v[i] < 0.0 || v[i] > 1.0)) fail(what, k, fmt(v[i]) + " is outside [0, 1]");
  }
  out.x = v[0];
  out.y = v[1];
  out.z = v[2];
  out.has_z = has_xyz;

  auto conf = j.find("confidence");
  if (conf != j.end() && !conf->is_null()) {
    out.confidence = number_at(*conf, what, key + ".confidence");
    if (out.confidence < 0.0 || out.confidence > 1.0)
      fail(what, key + ".confidence", fmt(out.confidence) + " is outside [0, 1]");
  }
  return out;
}

}  // namespace

Skeleton parse_skeleton(const Json& j, const std::string& what) {
  if (!j.is_object()) fail(what, "", "expected a JSON object");
  if (j.contains("format")) {
    const Json& f = j["format"];
    if (!f.is_string() || f.get<std::string>() != "iris.skeleton")
      fail(what, "format", "expected \"iris.skeleton\", found " + f.dump());
  }
  if (j.contains("version")) {
    const Json& v = j["version"];
    if (!v.is_number_integer() || v.get<int64_t>() != 1) fail(what, "version", "unsupported version " + v.dump());
  }

  Skeleton s;
  auto joints = j.find("joints");
  if (joints == j.end()) fail(what, "joints", "missing");
  if (!joints->is_array() || joints->empty()) fail(what, "joints", "expected a non-empty array");
  for (size_t i = 0; i < joints->size(); ++i) {
    const std::string key = "joints[" + std::to_string(i) + "]";
    Joint jt = parse_joint((*joints)[i], what, key);
    if (s.find(jt.name) >= 0) fail(what, key + ".name", "duplicate joint \"" + jt.name + "\"");
    s.joints.push_back(std::move(jt));
  }

  auto edges = j.find("edges");
  if (edges == j.end()) fail(what, "edges", "missing");
  if (!edges->is_array()) fail(what, "edges", "expected an array of [from, to] joint-name pairs");
  std::set<std::pair<int, int>> seen;
  for (size_t i = 0; i < edges->size(); ++i) {
    const std::string key = "edges[" + std::to_string(i) + "]";
    const Json& e = (*edges)[i];
    if (!e.is_array() || e.size() != 2) fail(what, key, "expected [from, to], found " + e.dump());
    int idx[2];
    for (int k = 0; k < 2; ++k) {
      const std::string ek = key + "[" + std::to_string(k) + "]";
      if (!e[k].is_string()) fail(what, ek, "expected a joint name, found " + e[k].dump());
      idx[k] = s.find(e[k].get<std::string>());
      if (idx[k] < 0) fail(what, ek, "unknown joint \"" + e[k].get<std::string>() + "\"");
    }
    if (idx[0] == idx[1]) fail(what, key, "edge from a joint to itself");
    const auto canon = std::make_pair(std::min(idx[0], idx[1]), std::max(idx[0], idx[1]));
    if (!seen.insert(canon).second) fail(what, key, "duplicate edge");
    s.edges.emplace_back(idx[0], idx[1]);
  }

  if (j.contains("camera") && !j["camera"].is_null()) {
    const Json& c = j["camera"];
    if (!c.is_object()) fail(what, "camera", "expected an object");
    if (c.contains("distance")) {
      s.camera.distance = number_at(c["distance"], what, "camera.distance");
      if (s.camera.distance <= 0) fail(what, "camera.distance", "must be positive");
    }
    s.has_camera = true;
  }
  return s;
}

Skeleton load_skeleton(const std::string& path) { return parse_skeleton(read_json_file(path), path); }

Json skeleton_to_json(const Skeleton& s) {
  Json joints = Json::array();
  for (const auto& jt : s.joints) {
    Json o = {{"name", jt.name}, {"type", jt.type}};
    if (jt.has_z)
      o["xyz"] = {round4(jt.x), round4(jt.y), round4(jt.z)};
    else
      o["xy"] = {round4(jt.x), round4(jt.y)};
    o["confidence"] = round4(jt.confidence);
    joints.push_back(std::move(o));
  }
  Json edges = Json::array();
  for (const auto& e : s.edges) edges.push_back({s.joints[e.first].name, s.joints[e.second].name});
  Json out = {{"format", "iris.skeleton"}, {"version", 1}, {"joints", joints}, {"edges", edges}};
  if (s.has_camera) out["camera"] = {{"distance", s.camera.distance}};
  return out;
}

std::string format_skeleton(const Skeleton& s, const std::string& description) {
  const Json j = skeleton_to_json(s);
  std::string out = "{\n  \"format\": \"iris.skeleton\",\n  \"version\": 1,\n";
  if (!description.empty()) out += "  \"description\": " + Json(description).dump() + ",\n";
  out += "  \"joints\": [\n";
  const Json& joints = j["joints"];
  for (size_t i = 0; i < joints.size(); ++i) {
    const Json& jt = joints[i];
    const char* key = jt.contains("xyz") ? "xyz" : "xy";
    out += "    {\"name\": " + jt["name"].dump() + ", \"type\": " + jt["type"].dump() + ", \"" + key +
           "\": " + jt[key].dump() + ", \"confidence\": " + jt["confidence"].dump() + "}";
    out += i + 1 < joints.size() ? ",\n" : "\n";
  }
  out += "  ],\n  \"edges\": [\n";
  const Json& edges = j["edges"];
  for (size_t i = 0; i < edges.size(); ++i) {
    out += "    [" + edges[i][0].dump() + ", " + edges[i][1].dump() + "]";
    out += i + 1 < edges.size() ? ",\n" : "\n";
  }
  out += "  ]";
  if (j.contains("camera")) out += ",\n  \"camera\": " + j["camera"].dump();
  out += "\n}\n";
  return out;
}

void save_skeleton(const std::string& path, const Skeleton& s, const std::string& description) {
  const std::string text = format_skeleton(s, description);
  write_file_atomic(path, text.data(), text.size());
}

Skeleton project_to_2d(const Skeleton& s, const Camera* camera, std::string* message) {
  if (message) message->clear();
  if (!s.is_3d()) return s;
  const Camera* cam = camera ? camera : s.has_camera ? &s.camera : nullptr;
  Skeleton out = s;
  out.has_camera = false;
  int clamped = 0;
  for (size_t i = 0; i < out.joints.size(); ++i) {
    Joint& jt = out.joints[i];
    if (cam && jt.has_z) {
      const double denom = cam->distance + jt.z;
      if (!(denom > 0))
        throw FormatError("joints[" + std::to_string(i) + "] (\"" + jt.name + "\"): behind the camera (distance " +
                          fmt(cam->distance) + ", z " + fmt(jt.z) + ")");
      const double scale = cam->distance / denom;
      jt.x = 0.5 + (jt.x - 0.5) * scale;
      jt.y = 0.5 + (jt.y - 0.5) * scale;
    }
    jt.z = 0;
    jt.has_z = false;
    if (jt.x < 0 || jt.x > 1 || jt.y < 0 || jt.y > 1) {
      jt.x = std::min(1.0, std::max(0.0, jt.x));
      jt.y = std::min(1.0, std::max(0.0, jt.y));
      jt.confidence = 0;
      ++clamped;
    }
  }
  if (message) {
    *message = cam ? "skeleton has 3D joints: projected with a pinhole camera at distance " + fmt(cam->distance)
                   : "skeleton has 3D joints and no camera: z dropped (orthographic projection)";
    if (clamped) *message += "; " + std::to_string(clamped) + " joint(s) outside the image set invisible";
  }
  return out;
}

// ---- Default skeleton and poses ----------------------------------------------------------------

namespace {

struct JointDef {
  const char* name;
  const char* type;
};
const JointDef kJoints[joint::Count] = {
    {"head", "head"},         {"neck", "neck"},         {"right_shoulder", "shoulder"},
    {"right_elbow", "elbow"}, {"right_wrist", "wrist"}, {"left_shoulder", "shoulder"},
    {"left_elbow", "elbow"},  {"left_wrist", "wrist"},  {"right_hip", "hip"},
    {"right_knee", "knee"},   {"right_ankle", "ankle"}, {"left_hip", "hip"},
    {"left_knee", "knee"},    {"left_ankle", "ankle"},
};
const std::pair<int, int> kEdges[kNumLimbs] = {
    {joint::Neck, joint::Head},
    {joint::Neck, joint::RightShoulder},
    {joint::RightShoulder, joint::RightElbow},
    {joint::RightElbow, joint::RightWrist},
    {joint::Neck, joint::LeftShoulder},
    {joint::LeftShoulder, joint::LeftElbow},
    {joint::LeftElbow, joint::LeftWrist},
    {joint::Neck, joint::RightHip},
    {joint::RightHip, joint::RightKnee},
    {joint::RightKnee, joint::RightAnkle},
    {joint::Neck, joint::LeftHip},
    {joint::LeftHip, joint::LeftKnee},
    {joint::LeftKnee, joint::LeftAnkle},
};

// Body proportions in units of the figure height (head top ~ 0.02, ankles ~ 0.98). The neck
// is long enough that the head disc leaves a visible stub of the neck limb (the head stays
// attached to the body even when blurred).
constexpr double kHeadY = 0.09, kNeckY = 0.22, kShoulderX = 0.11, kShoulderY = 0.24, kHipX = 0.06, kHipY = 0.56;
constexpr double kUpperArm = 0.17, kForearm = 0.16, kThigh = 0.21, kShin = 0.21;
constexpr double kHeadRadius = 0.07;

struct ArmAngles {
  double upper, fore;
};
// Angles from straight down, positive away from the body.
ArmAngles arm_angles(bool raised, bool out) {
  if (raised) return {145, 165};
  if (out) return {80, 88};
  return {12, 16};
}

constexpr double kPi = 3.14159265358979323846;

}  // namespace

Skeleton make_pose(const PoseParams& p) {
  Skeleton s;
  s.joints.resize(joint::Count);
  for (int i = 0; i < joint::Count; ++i) {
    s.joints[i].name = kJoints[i].name;
    s.joints[i].type = kJoints[i].type;
  }
  for (const auto& e : kEdges) s.edges.push_back(e);

  // Body-frame positions (u right in image, v down), units of the figure height.
  double u[joint::Count] = {}, v[joint::Count] = {};
  auto set = [&](int j, double uu, double vv) {
    u[j] = uu;
    v[j] = vv;
  };
  // Extends from joint `from` by `len` at `deg` from straight down; `side` -1 = image left.
  auto limb = [&](int to, int from, double len, double deg, double side) {
    const double a = deg * kPi / 180.0;
    set(to, u[from] + side * len * std::sin(a), v[from] + len * std::cos(a));
  };
  set(joint::Head, 0, kHeadY);
  set(joint::Neck, 0, kNeckY);
  // The person's right side is on the image's left (facing the viewer).
  set(joint::RightShoulder, -kShoulderX, kShoulderY);
  set(joint::LeftShoulder, kShoulderX, kShoulderY);
  set(joint::RightHip, -kHipX, kHipY);
  set(joint::LeftHip, kHipX, kHipY);

  const bool right_up = p.arms == ArmPose::RightUp || p.arms == ArmPose::BothUp;
  const bool left_up = p.arms == ArmPose::LeftUp || p.arms == ArmPose::BothUp;
  const bool out = p.arms == ArmPose::Out;
  const ArmAngles ra = arm_angles(right_up, out), la = arm_angles(left_up, out);
  limb(joint::RightElbow, joint::RightShoulder, kUpperArm, ra.upper + p.jitter_deg[0], -1);
  limb(joint::RightWrist, joint::RightElbow, kForearm, ra.fore + p.jitter_deg[1], -1);
  limb(joint::LeftElbow, joint::LeftShoulder, kUpperArm, la.upper + p.jitter_deg[2], +1);
  limb(joint::LeftWrist, joint::LeftElbow, kForearm, la.fore + p.jitter_deg[3], +1);

  const bool apart = p.legs == LegPose::Apart;
  const double thigh = apart ? 14 : 1, shin = apart ? 17 : 1;
  limb(joint::RightKnee, joint::RightHip, kThigh, thigh + p.jitter_deg[4], -1);
  limb(joint::RightAnkle, joint::RightKnee, kShin, shin + p.jitter_deg[4], -1);
  limb(joint::LeftKnee, joint::LeftHip, kThigh, thigh + p.jitter_deg[5], +1);
  limb(joint::LeftAnkle, joint::LeftKnee, kShin, shin + p.jitter_deg[5], +1);

  for (int i = 0; i < joint::Count; ++i) {
    double x = p.center_x + u[i] * p.height, y = p.top + v[i] * p.height;
    s.joints[i].x = round4(std::min(1.0, std::max(0.0, x)));
    s.joints[i].y = round4(std::min(1.0, std::max(0.0, y)));
  }
  return s;
}

const Skeleton& default_skeleton_2d() {
  static const Skeleton s = [] {
    PoseParams p;
    p.top = 0.1;
    p.height = 0.8;
    return make_pose(p);
  }();
  return s;
}

bool has_default_topology(const Skeleton& s) {
  if (s.joints.size() != joint::Count || s.edges.size() != kNumLimbs) return false;
  for (int i = 0; i < joint::Count; ++i)
    if (s.joints[i].name != kJoints[i].name) return false;
  for (int e = 0; e < kNumLimbs; ++e)
    if (s.edges[e] != kEdges[e]) return false;
  return true;
}

double head_radius(double figure_height) { return kHeadRadius * figure_height; }

double limb_half_width(int resolution) { return 1.25 * resolution / 64.0; }

}  // namespace iris::world
