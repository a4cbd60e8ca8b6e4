// Tinyworld: sampler determinism, renderer + analyzer round trip (per-attribute accuracy over
// all styles), stick-figure PCK, held-out split, skeleton files, captions and questions,
// dataset export.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <set>
#include <sstream>

#include "core/error.h"
#include "core/image.h"
#include "core/mmap_file.h"
#include "core/png_text.h"
#include "world/analyzer.h"
#include "world/captions.h"
#include "world/dataset.h"
#include "world/render.h"
#include "world/rng.h"
#include "world/scene.h"
#include "world/skeleton.h"

namespace fs = std::filesystem;
using namespace iris::world;

namespace {

const fs::path kSkeletonDir = fs::path(__FILE__).parent_path().parent_path() / "assets" / "skeletons";

uint64_t fnv1a(const void* data, size_t n, uint64_t h = 1469598103934665603ull) {
  const auto* p = static_cast<const uint8_t*>(data);
  for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

fs::path temp_dir(const std::string& name) {
  const fs::path p = fs::temp_directory_path() / ("iris_test_world_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(p);
  fs::create_directories(p);
  return p;
}

void write(const fs::path& p, const std::string& text) {
  iris::write_file_atomic(p.string(), text.data(), text.size());
}

// Separable Gaussian blur plus a deterministic colour cast and noise: a stand-in for the
// softness of generated images.
iris::Image degrade(const iris::Image& in, double sigma, int noise, int cast, uint64_t seed) {
  const int w = in.width, h = in.height, r = static_cast<int>(std::ceil(3 * sigma));
  std::vector<double> k(2 * r + 1);
  double sum = 0;
  for (int i = -r; i <= r; ++i) sum += k[i + r] = std::exp(-i * i / (2 * sigma * sigma));
  for (double& v : k) v /= sum;
  std::vector<double> a(in.pixels.begin(), in.pixels.end()), b(a.size());
  auto idx = [&](int x, int y, int c) { return (static_cast<size_t>(y) * w + x) * 3 + c; };
  for (int pass = 0; pass < 2; ++pass) {
    for (int y = 0; y < h; ++y)
      for (int x = 0; x < w; ++x)
        for (int c = 0; c < 3; ++c) {
          double acc = 0;
          for (int i = -r; i <= r; ++i) {
            const int xx = pass ? x : std::min(w - 1, std::max(0, x + i)),
                      yy = pass ? std::min(h - 1, std::max(0, y + i)) : y;
            acc += k[i + r] * a[idx(xx, yy, c)];
          }
          b[idx(x, y, c)] = acc;
        }
    std::swap(a, b);
  }
  Rng rng(seed);
  const int shift[3] = {rng.range(-cast, cast), rng.range(-cast, cast), rng.range(-cast, cast)};
  iris::Image out = in;
  for (size_t i = 0; i < a.size(); ++i) {
    const double v = a[i] + shift[i % 3] + rng.range(-noise, noise);
    out.pixels[i] = static_cast<uint8_t>(std::lround(std::min(255.0, std::max(0.0, v))));
  }
  return out;
}

// Renders `per_style` scenes of every style and scores the analyzer's reading of them.
SceneScore analyzer_round_trip(int per_style, uint64_t base, double sigma, SceneScore* per = nullptr) {
  SceneScore total;
  for (Style st : all_styles()) {
    SamplerOptions opt;
    opt.styles = {st};
    SceneScore ss;
    for (int i = 0; i < per_style; ++i) {
      const Scene s = sample_scene(sample_seed(base, i), opt);
      iris::Image img = render_scene(s);
      if (sigma > 0) img = degrade(img, sigma, 6, 10, s.seed);
      ss += score_scene(s, analyze_image(img));
    }
    if (per) per[int(st)] = ss;
    total += ss;
  }
  return total;
}

void expect_rate(const char* what, const Tally& t, double min_rate) {
  EXPECT_GE(t.rate(), min_rate) << what << ": " << t.correct << " / " << t.total;
}

}  // namespace

// ---- Sampler and renderer ------------------------------------------------------------------------

TEST(WorldScene, SameSeedSameSceneImageCaptionAndQuestions) {
  DatasetOptions opt;
  opt.questions_per_image = 8;
  for (int i = 0; i < 20; ++i) {
    const uint64_t seed = sample_seed(77, i);
    const Sample a = make_sample(seed, opt), b = make_sample(seed, opt);
    EXPECT_EQ(scene_to_json(a.scene).dump(), scene_to_json(b.scene).dump());
    EXPECT_EQ(render_scene(a.scene).pixels, render_scene(b.scene).pixels);
    EXPECT_EQ(a.caption.text, b.caption.text);
    ASSERT_EQ(a.questions.size(), b.questions.size());
    for (size_t k = 0; k < a.questions.size(); ++k) {
      EXPECT_EQ(a.questions[k].question, b.questions[k].question);
      EXPECT_EQ(a.questions[k].answer, b.questions[k].answer);
    }
  }
  EXPECT_NE(scene_to_json(sample_scene(1)).dump(), scene_to_json(sample_scene(2)).dump());
}

// Golden values: the sampler, renderer and captions are a data format. A change here changes
// every dataset and must be deliberate (update the constants and say so in the commit).
TEST(WorldScene, GoldenRendersAndCaptions) {
  uint64_t pixels = 1469598103934665603ull, text = 1469598103934665603ull;
  DatasetOptions opt;
  for (int i = 0; i < 16; ++i) {
    const Sample s = make_sample(sample_seed(2024, i), opt);
    const iris::Image img = render_scene(s.scene);
    pixels = fnv1a(img.pixels.data(), img.pixels.size(), pixels);
    text = fnv1a(s.caption.text.data(), s.caption.text.size(), text);
  }
  std::printf("golden: pixels %016llx captions %016llx\n", static_cast<unsigned long long>(pixels),
              static_cast<unsigned long long>(text));
  EXPECT_EQ(pixels, 0x36d4617d849e0c19ull);
  EXPECT_EQ(text, 0x691c614c83cb4f42ull);
}

TEST(WorldScene, SamplerInvariants) {
  int figures = 0;
  std::set<int> counts;
  for (int i = 0; i < 400; ++i) {
    const Scene s = sample_scene(sample_seed(5, i));
    ASSERT_GE(s.objects.size(), 1u);
    ASSERT_LE(s.objects.size(), 3u);
    counts.insert(static_cast<int>(s.objects.size()));
    std::set<int> cells;
    for (const auto& o : s.objects) {
      EXPECT_TRUE(cells.insert(o.cell).second) << "two objects in one cell, seed " << s.seed;
      if (s.figure) {
        EXPECT_EQ(cell_col(o.cell), s.figure->side == Side::Left ? 2 : 0);
      }
      const ObjectGeometry g = object_geometry(o, s.resolution);
      EXPECT_GE(g.cx - g.half, 0);
      EXPECT_LE(g.cx + g.half, s.resolution);
    }
    if (s.figure) {
      ++figures;
      EXPECT_TRUE(has_default_topology(s.figure->skeleton));
      for (const auto& j : s.figure->skeleton.joints) {
        EXPECT_GT(j.x, 0.0);
        EXPECT_LT(j.x, 1.0);
        EXPECT_GT(j.y, 0.0);
        EXPECT_LT(j.y, 1.0);
      }
    }
  }
  EXPECT_EQ(counts, (std::set<int>{1, 2, 3}));
  EXPECT_GT(figures, 60);
  EXPECT_LT(figures, 140);
}

TEST(WorldScene, JsonRoundTripRendersIdentically) {
  for (int i = 0; i < 30; ++i) {
    const Scene s = sample_scene(sample_seed(8, i));
    const Scene back = scene_from_json(iris::parse_json(scene_to_json(s).dump(), "scene"), "scene");
    EXPECT_EQ(render_scene(s).pixels, render_scene(back).pixels) << scene_to_json(s).dump();
  }
  EXPECT_THROW(scene_from_json(iris::parse_json(R"({"background":"gray","style":"wavy","objects":[]})", "s"), "s"),
               iris::ConfigError);
}

TEST(WorldScene, RendersAreSquareRgbAtAnyResolution) {
  SamplerOptions opt;
  opt.resolution = 96;
  const Scene s = sample_scene(3, opt);
  const iris::Image img = render_scene(s);
  EXPECT_EQ(img.width, 96);
  EXPECT_EQ(img.height, 96);
  EXPECT_EQ(img.channels, 3);
  const AnalyzedScene a = analyze_image(img);
  const SceneScore sc = score_scene(s, a);
  EXPECT_EQ(sc.object_attributes().correct, sc.object_attributes().total);
}

TEST(WorldScene, OwnerMapNamesWhatEachPixelShows) {
  int objects_seen = 0, figures_seen = 0;
  for (int i = 0; i < 40; ++i) {
    Scene s = sample_scene(sample_seed(11, i));
    s.style = Style::Flat;  // flat fills: an object's pixels are exactly its colour
    const iris::Image img = render_scene(s);
    const std::vector<int> owner = render_owner_map(s);
    ASSERT_EQ(owner.size(), static_cast<size_t>(s.resolution * s.resolution));
    const int figure = static_cast<int>(s.objects.size());
    for (int y = 0; y < s.resolution; ++y)
      for (int x = 0; x < s.resolution; ++x) {
        const int w = owner[static_cast<size_t>(y) * s.resolution + x];
        const uint8_t* p = &img.pixels[(static_cast<size_t>(y) * s.resolution + x) * 3];
        const Rgb got{p[0], p[1], p[2]};
        SCOPED_TRACE("scene " + std::to_string(i) + " pixel " + std::to_string(x) + "," + std::to_string(y));
        ASSERT_GE(w, -1);
        ASSERT_LE(w, figure);
        if (w == -1) {
          const Rgb bg = background_rgb(s.background, (y + 0.5) / s.resolution);
          EXPECT_TRUE(got.r == bg.r && got.g == bg.g && got.b == bg.b);
        } else if (w < figure) {
          const Rgb c = color_rgb(s.objects[static_cast<size_t>(w)].color);
          EXPECT_TRUE(got.r == c.r && got.g == c.g && got.b == c.b);
          ++objects_seen;
        } else {
          ASSERT_TRUE(s.figure.has_value());
          ++figures_seen;
        }
      }
  }
  EXPECT_GT(objects_seen, 1000);
  EXPECT_GT(figures_seen, 50);
  // Pixelated renders: the map follows the block sampling.
  Scene s = sample_scene(sample_seed(11, 1));
  s.style = Style::Pixelated;
  const std::vector<int> owner = render_owner_map(s);
  for (int y = 0; y < s.resolution; y += 2)
    for (int x = 0; x < s.resolution; x += 2)
      EXPECT_EQ(owner[static_cast<size_t>(y) * s.resolution + x], owner[static_cast<size_t>(y + 1) * s.resolution + x + 1]);
}

// ---- Analyzer ----------------------------------------------------------------------------------

TEST(WorldAnalyzer, ReadsItsOwnRendersAtLeast99PercentPerAttribute) {
  SceneScore per[kNumStyles];
  const SceneScore total = analyzer_round_trip(150, 1234, 0, per);
  std::printf("analyzer on %d clean renders (150 per style)\n%s", 150 * kNumStyles, format_score_table(total).c_str());
  for (Style st : all_styles())
    std::printf("  %-10s objects %6.2f%%  style %6.2f%%\n", name(st), 100 * per[int(st)].object_attributes().rate(),
                100 * per[int(st)].style.rate());
  expect_rate("color", total.color, 0.99);
  expect_rate("shape", total.shape, 0.99);
  expect_rate("size", total.size, 0.99);
  expect_rate("position", total.position, 0.99);
  expect_rate("count", total.count, 0.99);
  expect_rate("style", total.style, 0.99);
  expect_rate("background", total.background, 0.99);
  expect_rate("figure", total.figure, 0.99);
  expect_rate("figure color", total.figure_color, 0.99);
  expect_rate("arms", total.arms, 0.99);
  expect_rate("legs", total.legs, 0.99);
  expect_rate("joints", total.joints, 0.99);
  for (Style st : all_styles()) {
    expect_rate(name(st), per[int(st)].object_attributes(), 0.99);
    expect_rate(name(st), per[int(st)].style, 0.99);
  }
}

// Generated images are soft: the analyzer must still read mildly blurred, noisy, tinted
// renders (sigma 0.6 px, +-6 noise, +-10 cast). Bounds sit a few points under measured values.
TEST(WorldAnalyzer, RobustToBlurNoiseAndColourCast) {
  SceneScore per[kNumStyles];
  const SceneScore total = analyzer_round_trip(40, 99, 0.6, per);
  std::printf("analyzer on %d degraded renders\n%s", 40 * kNumStyles, format_score_table(total).c_str());
  expect_rate("objects", total.object_attributes(), 0.93);
  expect_rate("style", total.style, 0.90);
  expect_rate("joints", total.joints, 0.90);
  expect_rate("background", total.background, 0.98);
}

TEST(WorldAnalyzer, JointsOfRenderedFiguresPck) {
  SamplerOptions opt;
  opt.figure_probability = 1.0;
  Tally pck10, pck05;
  double err = 0;
  int n = 0;
  for (int i = 0; i < 120; ++i) {
    const Scene s = sample_scene(sample_seed(31, i), opt);
    const AnalyzedScene a = analyze_image(render_scene(s));
    ASSERT_TRUE(a.figure.has_value()) << "seed " << s.seed;
    pck10 += pck(s.figure->skeleton, a.figure->joints, 0.1);
    pck05 += pck(s.figure->skeleton, a.figure->joints, 0.05);
    for (int j = 0; j < joint::Count; ++j)
      if (a.figure->joints[j].found)
        err += std::hypot(a.figure->joints[j].x - s.figure->skeleton.joints[j].x,
                          a.figure->joints[j].y - s.figure->skeleton.joints[j].y),
            ++n;
  }
  std::printf("PCK@0.1 %.2f%%  PCK@0.05 %.2f%%  mean joint error %.2f px at 64x64\n", 100 * pck10.rate(),
              100 * pck05.rate(), 64 * err / std::max(1, n));
  EXPECT_GE(pck10.rate(), 0.99);
  EXPECT_GE(pck05.rate(), 0.97);
}

TEST(WorldAnalyzer, PoseSkeletonPresetsAreReadBack) {
  for (const char* f : {"default_2d.json", "pose_left_arm_up.json", "pose_right_arm_up.json", "pose_both_arms_up.json",
                        "pose_arms_out.json", "pose_legs_apart.json", "pose_star.json"}) {
    const Skeleton sk = load_skeleton((kSkeletonDir / f).string());
    ASSERT_TRUE(has_default_topology(sk)) << f;
    const iris::Image map = render_skeleton_map(sk, 64);
    EXPECT_EQ(map.width, 64);
    // A figure standing in the middle of an otherwise empty scene (plus one object, as the
    // analyzer's style reading expects) is read back within PCK@0.1.
    Scene s;
    s.objects.push_back({Shape::Square, Color::Red, Size::Small, 6});
    Figure fig;
    fig.skeleton = sk;
    fig.height = 0.8;
    s.figure = fig;
    const AnalyzedScene a = analyze_image(render_scene(s));
    ASSERT_TRUE(a.figure.has_value()) << f;
    EXPECT_EQ(pck(sk, a.figure->joints, 0.1).correct, joint::Count) << f;
  }
}

TEST(WorldAnalyzer, ScoringCountsOnlyWhatACaptionDescribes) {
  Scene s;
  s.style = Style::Outlined;
  s.objects = {{Shape::Circle, Color::Red, Size::Small, 0}, {Shape::Square, Color::Blue, Size::Large, 8}};
  AnalyzedScene got;
  got.style = Style::Flat;
  got.objects = {{Color::Red, Shape::Circle, Size::Large, 0, 0.1, 0.1, 0.8, 100},
                 {Color::Green, Shape::Square, Size::Large, 8, 0.9, 0.9, 0.8, 200}};
  const SceneScore all = score_scene(s, got);
  EXPECT_EQ(all.color.correct, 1);
  EXPECT_EQ(all.size.correct, 1);
  EXPECT_EQ(all.shape.correct, 2);
  EXPECT_EQ(all.position.correct, 2);
  EXPECT_EQ(all.style.correct, 0);
  Caption cap;
  cap.mentions = {{0, true, true, false, true}};  // "a red circle at the top left"
  ScoreOptions o;
  o.caption = &cap;
  const SceneScore part = score_scene(s, got, o);
  EXPECT_EQ(part.color.total, 1);
  EXPECT_EQ(part.color.correct, 1);
  EXPECT_EQ(part.size.total, 0);
  EXPECT_EQ(part.style.total, 0);
  // A missing object counts every described attribute wrong.
  got.objects.resize(1);
  const SceneScore miss = score_scene(s, got);
  EXPECT_EQ(miss.color.total, 2);
  EXPECT_EQ(miss.count.correct, 0);
}

// ---- Split -------------------------------------------------------------------------------------

TEST(WorldSplit, HeldOutScenesAndTemplatesNeverReachTraining) {
  DatasetOptions train, held;
  train.base_seed = held.base_seed = 42;
  train.count = 300;
  held.count = 100;
  held.split = Split::HeldOut;
  train.questions_per_image = held.questions_per_image = 12;
  const std::vector<uint64_t> a = split_seeds(train), b = split_seeds(held);
  std::set<uint64_t> sa(a.begin(), a.end());
  for (uint64_t s : b) EXPECT_EQ(sa.count(s), 0u);

  int held_templates = 0, novel = 0;
  for (uint64_t seed : a) {
    const Sample s = make_sample(seed, train);
    EXPECT_EQ(s.split, Split::Train);
    EXPECT_FALSE(s.novel_combo);
    EXPECT_FALSE(s.caption.held_out_template) << s.caption.template_id;
    for (const auto& o : s.scene.objects) EXPECT_FALSE(o.color == Color::Purple && o.shape == Shape::Triangle);
    for (const auto& q : s.questions) EXPECT_FALSE(q.held_out_template) << q.template_id;
  }
  for (uint64_t seed : b) {
    const Sample s = make_sample(seed, held);
    EXPECT_EQ(s.split, Split::HeldOut);
    held_templates += s.caption.held_out_template;
    novel += s.novel_combo;
  }
  EXPECT_GT(held_templates, 20);
  EXPECT_GT(novel, 10);
  // The seed hash puts ~10% of seeds in the held-out bucket.
  int bucket = 0;
  for (int i = 0; i < 5000; ++i) bucket += seed_held_out(sample_seed(0, i));
  EXPECT_NEAR(bucket / 5000.0, 0.10, 0.015);
  // Every template kind has training templates; held-out ones exist for captions and questions.
  std::set<std::string> held_kinds;
  for (const auto& t : all_templates())
    if (t.held_out) held_kinds.insert(t.kind);
  for (const char* k : {"caption", "color", "shape", "count", "position", "relation", "exists", "describe"})
    EXPECT_TRUE(held_kinds.count(k)) << k;
}

// ---- Skeleton files ----------------------------------------------------------------------------

TEST(WorldSkeleton, DefaultSkeletonFileMatchesTheCode) {
  const Skeleton file = load_skeleton((kSkeletonDir / "default_2d.json").string());
  const Skeleton& code = default_skeleton_2d();
  ASSERT_EQ(file.joints.size(), 14u);
  ASSERT_EQ(file.edges.size(), 13u);
  for (size_t i = 0; i < file.joints.size(); ++i) {
    EXPECT_EQ(file.joints[i].name, code.joints[i].name);
    EXPECT_EQ(file.joints[i].type, code.joints[i].type);
    EXPECT_NEAR(file.joints[i].x, code.joints[i].x, 1e-9);
    EXPECT_NEAR(file.joints[i].y, code.joints[i].y, 1e-9);
  }
  EXPECT_EQ(file.edges, code.edges);
  // Round trip through the writer.
  const Skeleton back = parse_skeleton(iris::parse_json(format_skeleton(file, "x"), "mem"), "mem");
  EXPECT_EQ(format_skeleton(back), format_skeleton(file));
}

TEST(WorldSkeleton, BadFilesGiveErrorsNamingFileAndKey) {
  const fs::path dir = temp_dir("skel");
  auto error_of = [&](const std::string& name, const std::string& text) -> std::string {
    write(dir / name, text);
    try {
      load_skeleton((dir / name).string());
    } catch (const iris::FormatError& e) {
      return e.what();
    } catch (const std::exception& e) {
      return std::string("wrong exception type: ") + e.what();
    }
    return "no error";
  };
  const std::string ok_joints = R"("joints": [{"name": "a", "xy": [0.1, 0.2]}, {"name": "b", "xy": [0.3, 0.4]}])";
  std::string e = error_of("edge.json", "{" + ok_joints + R"(, "edges": [["a", "b"], ["a", "elbw"]]})");
  EXPECT_NE(e.find("edge.json"), std::string::npos) << e;
  EXPECT_NE(e.find("edges[1][1]"), std::string::npos) << e;
  EXPECT_NE(e.find("unknown joint \"elbw\""), std::string::npos) << e;

  e = error_of("range.json", R"({"joints": [{"name": "a", "xy": [0.1, 1.5]}], "edges": []})");
  EXPECT_NE(e.find("range.json"), std::string::npos) << e;
  EXPECT_NE(e.find("joints[0].xy[1]"), std::string::npos) << e;
  EXPECT_NE(e.find("outside [0, 1]"), std::string::npos) << e;

  e = error_of("broken.json", R"({"joints": [{"name": "a", "xy": [0.1, 0.5]}], "edges": [)");
  EXPECT_NE(e.find("broken.json"), std::string::npos) << e;
  EXPECT_NE(e.find("malformed JSON"), std::string::npos) << e;

  e = error_of("nan.json", R"({"joints": [{"name": "a", "xy": [0.1, NaN]}], "edges": []})");
  EXPECT_NE(e.find("nan.json"), std::string::npos) << e;

  e = error_of("dup.json",
               R"({"joints": [{"name": "a", "xy": [0.1, 0.5]}, {"name": "a", "xy": [0.2, 0.5]}], "edges": []})");
  EXPECT_NE(e.find("joints[1].name"), std::string::npos) << e;

  e = error_of("conf.json", R"({"joints": [{"name": "a", "xy": [0.1, 0.5], "confidence": 2}], "edges": []})");
  EXPECT_NE(e.find("joints[0].confidence"), std::string::npos) << e;

  e = error_of("both.json", R"({"joints": [{"name": "a", "xy": [0.1, 0.5], "xyz": [0.1, 0.5, 0]}], "edges": []})");
  EXPECT_NE(e.find("joints[0]"), std::string::npos) << e;

  e = error_of("self.json", "{" + ok_joints + R"(, "edges": [["a", "a"]]})");
  EXPECT_NE(e.find("edges[0]"), std::string::npos) << e;

  e = error_of("nojoints.json", R"({"edges": []})");
  EXPECT_NE(e.find("joints"), std::string::npos) << e;

  EXPECT_THROW(load_skeleton((dir / "missing.json").string()), iris::IoError);
  fs::remove_all(dir);
}

TEST(WorldSkeleton, ThreeDJointsAreProjectedOrFlattenedWithAMessage) {
  const Skeleton s3 = load_skeleton((kSkeletonDir / "example_3d.json").string());
  ASSERT_TRUE(s3.is_3d());
  ASSERT_TRUE(s3.has_camera);
  std::string msg;
  const Skeleton flat = project_to_2d(s3, nullptr, &msg);  // the file's own camera
  EXPECT_FALSE(flat.is_3d());
  EXPECT_NE(msg.find("pinhole camera at distance 2"), std::string::npos) << msg;
  const int wrist = s3.find("left_wrist");
  // z = -0.3 (toward the camera): pushed away from the centre by 2 / 1.7.
  EXPECT_NEAR(flat.joints[wrist].x, 0.5 + (s3.joints[wrist].x - 0.5) * 2.0 / 1.7, 1e-9);

  Skeleton no_cam = s3;
  no_cam.has_camera = false;
  const Skeleton dropped = project_to_2d(no_cam, nullptr, &msg);
  EXPECT_NE(msg.find("z dropped"), std::string::npos) << msg;
  EXPECT_DOUBLE_EQ(dropped.joints[wrist].x, s3.joints[wrist].x);

  Camera near;
  near.distance = 0.2;  // the wrist at z = -0.3 is behind this camera
  EXPECT_THROW(project_to_2d(s3, &near, &msg), iris::FormatError);

  const Skeleton two_d = default_skeleton_2d();
  project_to_2d(two_d, nullptr, &msg);
  EXPECT_EQ(msg, "");
}

// ---- Captions and questions ----------------------------------------------------------------------

namespace {

// Checks the surface grammar of a generated caption.
void check_caption(const Scene& s, const Caption& c) {
  const std::string& t = c.text;
  SCOPED_TRACE(t);
  EXPECT_FALSE(t.empty());
  EXPECT_EQ(t.find("  "), std::string::npos);
  EXPECT_EQ(t.find('{'), std::string::npos);
  EXPECT_NE(t.front(), ' ');
  EXPECT_NE(t.back(), ' ');
  EXPECT_EQ(t.find(" ,"), std::string::npos);
  EXPECT_EQ(t.find(", and"), std::string::npos);
  // Articles agree with the next word.
  std::istringstream in(t);
  std::vector<std::string> words;
  for (std::string w; in >> w;) words.push_back(w);
  for (size_t i = 0; i + 1 < words.size(); ++i) {
    const bool vowel = std::string("aeiou").find(words[i + 1][0]) != std::string::npos;
    if (words[i] == "a") {
      EXPECT_FALSE(vowel) << "a " << words[i + 1];
    }
    if (words[i] == "an") {
      EXPECT_TRUE(vowel) << "an " << words[i + 1];
    }
    EXPECT_NE(words[i], words[i + 1]) << "doubled word";
  }
  // One shape noun per object, and "and" joins the last item.
  int shapes = 0;
  for (const auto& w : words)
    for (Shape sh : all_shapes()) shapes += w.rfind(name(sh), 0) == 0;
  EXPECT_EQ(shapes, static_cast<int>(s.objects.size()));
  const size_t items = s.objects.size() + (s.figure ? 1 : 0);
  int ands = 0;
  for (const auto& w : words) ands += w == "and";
  if (items == 1) {
    EXPECT_LE(ands, 1);  // "... with its arms out and its legs apart"
  }
  if (items >= 2) {
    EXPECT_GE(ands, 1);
  }
  // Every mentioned attribute is in the text.
  for (const auto& m : c.mentions) {
    const Object& o = s.objects[m.object];
    EXPECT_NE(t.find(object_phrase(o, m.size, false)), std::string::npos);
  }
  if (c.count) {
    EXPECT_EQ(t.rfind(std::string(count_word(static_cast<int>(s.objects.size()))) + " objects: ", 0), 0u);
  }
  if (s.figure) {
    EXPECT_NE(t.find("stick figure"), std::string::npos);
  }
}

}  // namespace

TEST(WorldCaptions, GrammaticalForOneToThreeObjects) {
  std::set<std::string> templates;
  std::set<size_t> sizes;
  for (Split split : {Split::Train, Split::HeldOut})
    for (int i = 0; i < 300; ++i) {
      const Scene s = sample_scene(sample_seed(3, i));
      Rng rng(s.seed);
      CaptionOptions co;
      co.split = split;
      co.style_probability = 0.3;
      const Caption c = make_caption(s, rng, co);
      check_caption(s, c);
      templates.insert(c.template_id);
      sizes.insert(s.objects.size());
    }
  EXPECT_EQ(sizes, (std::set<size_t>{1, 2, 3}));
  EXPECT_GE(templates.size(), 7u);

  // The examples of the issue, exactly.
  Scene s;
  s.objects = {{Shape::Circle, Color::Red, Size::Small, 0}, {Shape::Square, Color::Blue, Size::Large, 8}};
  EXPECT_EQ(object_phrase(s.objects[0], true, true) + " " + position_phrase(0), "a small red circle at the top left");
  EXPECT_EQ(object_phrase({Shape::Triangle, Color::Orange, Size::Large, 4}, false, true), "an orange triangle");
}

TEST(WorldCaptions, TheCompleteCaptionStatesEverythingInOneWordingWhateverTheObjectOrder) {
  for (int i = 0; i < 200; ++i) {
    const Scene s = sample_scene(sample_seed(11, i));
    const Caption c = complete_caption(s);
    check_caption(s, c);
    SCOPED_TRACE(c.text);
    ASSERT_EQ(c.mentions.size(), s.objects.size());
    size_t at = 0;  // objects in reading order: each one's phrase after the previous one's
    int last_cell = -1;
    for (const ObjectMention& m : c.mentions) {
      const Object& o = s.objects[m.object];
      EXPECT_TRUE(m.color && m.shape && m.size && m.position);
      EXPECT_GE(o.cell, last_cell);
      last_cell = o.cell;
      const std::string phrase = object_phrase(o, true, true);
      const size_t found = c.text.find(phrase, at);
      ASSERT_NE(found, std::string::npos) << phrase;
      EXPECT_NE(c.text.find(cell_name(o.cell), found), std::string::npos);
      at = found + phrase.size();
    }
    EXPECT_NE(c.text.find(std::string(" on a ") + name(s.background) + " background, in the " + name(s.style) + " style"),
              std::string::npos);
    EXPECT_TRUE(c.background && c.style);
    if (s.figure) {
      EXPECT_TRUE(c.figure && c.arms && c.legs);
      EXPECT_NE(c.text.find(std::string("stick figure on the ") + name(s.figure->side)), std::string::npos);
      EXPECT_NE(c.text.find(s.figure->legs == LegPose::Apart ? "legs apart" : "legs together"), std::string::npos);
    }
    // The same scene with its objects listed in another order gets the same words.
    Scene reversed = s;
    std::reverse(reversed.objects.begin(), reversed.objects.end());
    EXPECT_EQ(complete_caption(reversed).text, c.text);
  }
}

TEST(WorldCaptions, WithoutThePoseOnlyTheFiguresArmsAndLegsAreLeftOut) {
  SamplerOptions so;
  so.figure_probability = 1.0;
  int legs_named = 0;
  for (int i = 0; i < 100; ++i) {
    const Scene s = sample_scene(sample_seed(9, i), so);
    ASSERT_TRUE(s.figure.has_value());
    Rng a(s.seed), b(s.seed);
    CaptionOptions named, unnamed;
    unnamed.pose = false;
    const Caption with = make_caption(s, a, named);
    const Caption without = make_caption(s, b, unnamed);
    EXPECT_TRUE(with.arms);
    EXPECT_FALSE(without.arms);
    EXPECT_FALSE(without.legs);
    EXPECT_TRUE(without.figure && without.figure_color);
    legs_named += with.legs;
    for (const char* w : {"arm", "leg"}) EXPECT_EQ(without.text.find(w), std::string::npos) << without.text;
    // The same draws otherwise: deleting the pose words from the named caption gives the other.
    EXPECT_EQ(without.template_id, with.template_id);
    EXPECT_EQ(without.mentions.size(), with.mentions.size());
    EXPECT_LT(without.text.size(), with.text.size());
    const std::string figure = std::string(name(s.figure->color)) + " stick figure";
    EXPECT_NE(without.text.find(figure), std::string::npos) << without.text;
    EXPECT_EQ(with.text.substr(0, with.text.find(figure)), without.text.substr(0, without.text.find(figure)));
  }
  EXPECT_GT(legs_named, 0);
}

TEST(WorldCaptions, QuestionsHaveAnswersFromTheScene) {
  std::map<std::string, int> kinds, pope;
  for (int i = 0; i < 200; ++i) {
    const Scene s = sample_scene(sample_seed(6, i));
    Rng rng(s.seed);
    const std::vector<Question> qs = make_questions(s, rng);
    for (const auto& q : qs) {
      SCOPED_TRACE(q.question + " -> " + q.answer);
      ++kinds[q.kind];
      if (!q.pope.empty()) ++pope[q.pope];
      EXPECT_FALSE(q.answer.empty());
      EXPECT_EQ(q.question.find('{'), std::string::npos);
      EXPECT_EQ(q.answer.find('{'), std::string::npos);
      EXPECT_TRUE(q.question.back() == '?' || q.question.back() == '.');
      if (q.kind == "exists") {
        // POPE negatives name an absent object, positives a present one.
        EXPECT_EQ(q.answer, q.pope == "positive" ? "yes" : "no");
      }
      if (q.template_id.rfind("q.count.objects", 0) == 0) {  // the group and its paraphrases
        EXPECT_EQ(q.answer, count_word(static_cast<int>(s.objects.size())));
      }
      if (q.kind == "style") {
        EXPECT_EQ(q.answer, name(s.style));
      }
      if (q.kind == "describe") {
        EXPECT_GT(q.answer.size(), 60u);
      }
      // The items the answer is read from: the one object an attribute question names (its
      // attribute is the answer), the objects a count counts, the present object a positive
      // probe names, the figure; none for absent objects, relations, style, background.
      const int n = static_cast<int>(s.objects.size());
      for (const int it : q.items) {
        EXPECT_GE(it, 0);
        EXPECT_LE(it, n);
        if (it == n) EXPECT_TRUE(s.figure.has_value());
      }
      if (q.kind == "color" || q.kind == "shape" || q.kind == "size" || q.kind == "position") {
        ASSERT_EQ(q.items.size(), 1u);
        const Object& o = s.objects[static_cast<size_t>(q.items[0])];
        const std::string said = q.kind == "color"   ? name(o.color)
                                 : q.kind == "shape" ? name(o.shape)
                                 : q.kind == "size"  ? name(o.size)
                                                     : cell_name(o.cell);
        EXPECT_EQ(q.answer, said);
      }
      if (q.kind == "exists") EXPECT_EQ(q.items.empty(), q.answer == "no");
      if (q.template_id.rfind("q.count.objects", 0) == 0) EXPECT_EQ(static_cast<int>(q.items.size()), n);
      if (q.kind == "count" && q.items.empty()) EXPECT_EQ(q.answer, count_word(0));
      if (q.kind == "figure") EXPECT_EQ(q.items.empty(), !s.figure.has_value());
      if (q.kind == "relation" || q.kind == "style" || q.kind == "background" || q.kind == "describe")
        EXPECT_TRUE(q.items.empty());
    }
  }
  for (const char* k : {"color", "shape", "size", "count", "position", "relation", "exists", "style", "background",
                        "figure", "describe"})
    EXPECT_GT(kinds[k], 0) << k;
  for (const char* k : {"positive", "random", "popular", "adversarial"}) EXPECT_GT(pope[k], 100) << k;
}

// Training scenes never show a held-out combination (purple triangles), and their questions never
// name one either: an absent-object probe about it would always be answered "no", teaching the
// model that such an object does not exist before the held-out scenes ask about it.
TEST(WorldCaptions, TrainingProbesNeverNameAHeldOutCombination) {
  const auto names_held_out = [](const Question& q) { return q.question.find("purple triangle") != std::string::npos; };
  int train_named = 0, unguarded_named = 0, held_out_named = 0, train_scenes = 0;
  for (int i = 0; i < 1500; ++i) {
    const Scene s = sample_scene(sample_seed(8, i));
    if (scene_split(s) != Split::Train) continue;
    ++train_scenes;
    QuestionOptions qo;
    qo.split = Split::Train;
    Rng rng(s.seed);
    for (const auto& q : make_questions(s, rng, qo)) train_named += names_held_out(q);
    qo.never_probed_in_training.clear();  // the guard off: random and adversarial probes name it
    Rng rng2(s.seed);
    for (const auto& q : make_questions(s, rng2, qo)) unguarded_named += names_held_out(q);
    qo = QuestionOptions{};
    qo.split = Split::HeldOut;  // held-out questions may ask about it (POPE negatives included)
    Rng rng3(s.seed);
    for (const auto& q : make_questions(s, rng3, qo)) held_out_named += names_held_out(q);
  }
  EXPECT_GT(train_scenes, 1000);
  EXPECT_EQ(train_named, 0);
  EXPECT_GT(unguarded_named, 50);
  EXPECT_GT(held_out_named, 50);
}

// The relation drill (a training mix): yes/no relation questions answer "yes" about half the
// time (the natural draw: about a third), each scene gets two (what, yes/no) pairs, and the
// items name the objects the answer is read from, consistent with the answer.
TEST(WorldCaptions, RelationDrillBalancesYesNoAndNamesItems) {
  // The relation {rel} words a question uses: 0 left of, 1 right of, 2 above, 3 below.
  const auto relation_of = [](const std::string& q) {
    if (q.find("to the left of") != std::string::npos) return 0;
    if (q.find("to the right of") != std::string::npos) return 1;
    if (q.find(" above ") != std::string::npos) return 2;
    return q.find(" below ") != std::string::npos ? 3 : -1;
  };
  const auto holds = [](const Object& j, const Object& i, int rel) {
    const int dc = cell_col(j.cell) - cell_col(i.cell), dr = cell_row(j.cell) - cell_row(i.cell);
    return rel == 0 ? dc < 0 : rel == 1 ? dc > 0 : rel == 2 ? dr < 0 : dr > 0;
  };
  int natural_yes = 0, natural_yesno = 0, drill_yes = 0, drill_yesno = 0, drill_what = 0, scenes = 0;
  for (int k = 0; k < 800; ++k) {
    const Scene s = sample_scene(sample_seed(9, k));
    if (s.objects.size() < 2 || scene_split(s) != Split::Train) continue;
    ++scenes;
    QuestionOptions natural;
    natural.max_questions = 100;  // nothing cut
    Rng rng(s.seed);
    for (const auto& q : make_questions(s, rng, natural)) {
      if (q.kind != "relation") continue;
      EXPECT_TRUE(q.items.empty()) << q.question;  // the default names no items
      if (q.answer == "yes" || q.answer == "no") ++natural_yesno, natural_yes += q.answer == "yes";
    }
    QuestionOptions drill = natural;
    drill.relations = {2, 0.5, true};
    Rng rng2(s.seed);
    for (const auto& q : make_questions(s, rng2, drill)) {
      if (q.kind != "relation") continue;
      const int rel = relation_of(q.question);
      ASSERT_GE(rel, 0) << q.question;
      ASSERT_FALSE(q.items.empty()) << q.question;
      for (int it : q.items) ASSERT_LT(it, static_cast<int>(s.objects.size())) << q.question;
      if (q.answer == "yes" || q.answer == "no") {
        ++drill_yesno;
        drill_yes += q.answer == "yes";
        ASSERT_EQ(q.items.size(), 2u) << q.question;  // {a, b}: "Is the a <rel> the b?"
        EXPECT_EQ(holds(s.objects[q.items[0]], s.objects[q.items[1]], rel), q.answer == "yes") << q.question;
      } else {
        ++drill_what;  // {reference, the objects related to it}; none -> "nothing"
        EXPECT_EQ(q.items.size() == 1, q.answer == "nothing") << q.question << " -> " << q.answer;
        for (size_t m = 1; m < q.items.size(); ++m)
          EXPECT_TRUE(holds(s.objects[q.items[m]], s.objects[q.items[0]], rel)) << q.question;
      }
    }
  }
  ASSERT_GT(scenes, 200);
  ASSERT_GT(natural_yesno, 200);
  const double natural_share = static_cast<double>(natural_yes) / natural_yesno;
  const double drill_share = static_cast<double>(drill_yes) / drill_yesno;
  EXPECT_LT(natural_share, 0.42);
  EXPECT_GT(drill_share, 0.45);
  EXPECT_LT(drill_share, 0.55);
  EXPECT_GT(drill_yesno, 1.8 * natural_yesno);  // two rounds per scene
  EXPECT_GT(drill_what, scenes);
}

TEST(WorldCaptions, TrainingDrawsManyPhrasingsPerKindAndNeverAHeldOutOne) {
  std::map<std::string, std::set<std::string>> phrasings;  // kind -> template ids drawn
  std::set<std::string> held_out_ids;
  for (const auto& t : all_templates())
    if (t.held_out) held_out_ids.insert(t.id);
  for (int i = 0; i < 400; ++i) {
    const Scene s = sample_scene(sample_seed(7, i));
    Rng rng(s.seed);
    QuestionOptions qo;
    qo.split = Split::Train;
    for (const auto& q : make_questions(s, rng, qo)) {
      EXPECT_FALSE(q.held_out_template) << q.question;
      EXPECT_EQ(held_out_ids.count(q.template_id), 0u) << q.template_id;
      phrasings[q.kind].insert(q.template_id);
    }
  }
  for (const char* k : {"color", "shape", "size", "position", "exists", "style", "background"})
    EXPECT_GE(phrasings[k].size(), 5u) << k;
  EXPECT_GE(phrasings["count"].size(), 10u);
  EXPECT_GE(phrasings["figure"].size(), 10u);
  // A held-out phrasing's text is never a training phrasing's text.
  std::set<std::string> train_text;
  for (const auto& t : all_templates())
    if (!t.held_out) train_text.insert(t.text);
  for (const auto& t : all_templates())
    if (t.held_out) EXPECT_EQ(train_text.count(t.text), 0u) << t.id;
}

// Paraphrases reword descriptions and captions without changing what they say: every colour,
// shape and position word stays, in order; articles agree with the new words; p = 0 changes
// nothing; and over many scenes every synonym of the lexicon shows up.
TEST(WorldCaptions, ParaphraseKeepsTheMeaningAndVariesTheWords) {
  auto content = [](const std::string& text) {
    static const std::set<std::string> keep = {"red", "green", "blue", "yellow", "purple", "orange", "white", "black",
                                               "circle", "square", "triangle", "diamond", "top", "bottom", "left",
                                               "right", "center", "middle", "stick", "arm", "legs", "flat", "outlined",
                                               "pixelated", "striped"};
    std::vector<std::string> out;
    std::istringstream in(text);
    for (std::string w; in >> w;) {
      while (!w.empty() && std::ispunct(static_cast<unsigned char>(w.back()))) w.pop_back();
      if (keep.count(w)) out.push_back(w);
    }
    return out;
  };
  std::set<std::string> words_seen;
  for (int i = 0; i < 300; ++i) {
    const Scene s = sample_scene(sample_seed(11, i));
    Rng rng(s.seed);
    const std::string text = i % 2 ? describe_scene(s, rng) : make_caption(s, rng).text;
    Rng r0(1);
    EXPECT_EQ(paraphrase(text, r0, 0.0), text);
    Rng r1(s.seed), r2(s.seed);
    const std::string p = paraphrase(text, r1, 0.5);
    EXPECT_EQ(p, paraphrase(text, r2, 0.5)) << "same seed, same words";
    EXPECT_EQ(content(p), content(text)) << text << "\n -> " << p;
    EXPECT_EQ(p.find('?'), std::string::npos);
    std::istringstream in(p);
    std::vector<std::string> w;
    for (std::string x; in >> x;) w.push_back(x);
    for (size_t k = 0; k + 1 < w.size(); ++k) {
      std::string a = w[k];
      a[0] = static_cast<char>(std::tolower(static_cast<unsigned char>(a[0])));
      if (a == "a" || a == "an") EXPECT_EQ(a, article_for(w[k + 1])) << p;
      words_seen.insert(w[k]);
    }
    if (!w.empty()) words_seen.insert(w.back());
  }
  for (const char* x : {"big", "huge", "little", "tiny", "medium-sized", "located", "placed", "positioned", "situated",
                        "contains", "displays", "lifting", "rendered", "things"})
    EXPECT_TRUE(words_seen.count(x)) << x;
}

// ---- Dataset -----------------------------------------------------------------------------------

TEST(WorldDataset, ExportWritesAFolderTheLoaderAndAnalyzerRead) {
  const fs::path dir = temp_dir("dataset");
  DatasetOptions opt;
  opt.base_seed = 5;
  opt.count = 12;
  opt.questions_per_image = 4;
  opt.sampler.figure_probability = 0.5;
  int reported = 0;
  iris::Progress progress;
  progress.on_step = [&](int step, int total, const std::string& stage) {
    reported = step;
    EXPECT_EQ(total, 12);
    EXPECT_EQ(stage, "tinyworld");
  };
  export_dataset(dir.string(), opt, progress);
  EXPECT_EQ(reported, 12);
  EXPECT_TRUE(fs::exists(dir / "dataset.json"));
  EXPECT_TRUE(fs::exists(dir / "questions.jsonl"));
  const std::vector<DatasetEntry> entries = load_dataset(dir.string());
  ASSERT_EQ(entries.size(), 12u);
  int skeletons = 0;
  for (const auto& e : entries) {
    const iris::Image img = iris::load_image(e.image);
    EXPECT_EQ(img.pixels, render_scene(e.scene).pixels);
    EXPECT_EQ(e.split, Split::Train);
    EXPECT_EQ(e.style, e.scene.style);
    const SceneScore sc = score_scene(e.scene, analyze_image(img));
    EXPECT_EQ(sc.object_attributes().correct, sc.object_attributes().total);
    if (e.skeleton) {
      ++skeletons;
      EXPECT_TRUE(has_default_topology(*e.skeleton));
    }
    EXPECT_EQ(e.skeleton.has_value(), e.scene.figure.has_value());
    const iris::PngText text = iris::read_png_text(e.image);
    ASSERT_FALSE(text.empty());
    EXPECT_EQ(text[0].first, "tinyworld");
  }
  EXPECT_GT(skeletons, 0);
  // A corrupt line is reported with its file and line number.
  write(dir / "captions.jsonl", iris::read_text_file((dir / "captions.jsonl").string()) + "{\"index\": 1}\n");
  try {
    load_dataset(dir.string());
    ADD_FAILURE() << "no error";
  } catch (const iris::Error& err) {
    EXPECT_NE(std::string(err.what()).find("captions.jsonl:13"), std::string::npos) << err.what();
  }
  fs::remove_all(dir);
}
