// iris-studio logic without a display: settings persistence, script parsing and running,
// skeleton editing, gallery indexing, the generation worker (cancel, preview, saved metadata).
#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <thread>

#include "app/studio/gallery.h"
#include "app/studio/script.h"
#include "app/studio/settings.h"
#include "app/studio/skeleton_edit.h"
#include "app/studio/worker.h"
#include "core/error.h"
#include "core/png_text.h"
#include "pipelines/random_model.h"
#include "test_util.h"

namespace iris::studio {
namespace {

using testing_util::scratch;
using testing_util::scratch_dir;

// ---- settings ----

TEST(StudioSettings, JsonRoundTripKeepsEveryField) {
  StudioSettings s;
  s.model = "/models/sd15";
  s.prompt = "a red fox";
  s.negative = "blurry";
  s.sampler = "dpmpp_2m";
  s.karras = true;
  s.steps = 30;
  s.cfg = 5.5;
  s.random_seed = false;
  s.seed = 1234;
  s.width = 640;
  s.height = 384;
  s.batch = 3;
  s.image_prompts = {{"/a.png", 0.6, "style"}, {"/b.jpg", 1.2, "composition"}};
  s.style = "watercolor";
  s.style_strength = 0.8;
  s.use_skeleton = true;
  s.skeleton = "/pose.json";
  s.vlm = "/llava";
  s.ask_image = "/q.png";
  s.ask_draft = "/draft";
  s.ask_draft_chain = 3;
  s.ask_visor_budget = 2;
  s.ask_var = true;
  s.ask_var_sink_dims = "47, 252";
  s.ask_var_p = 0.4;
  s.ask_locore = true;
  s.ask_locore_beta = 0.3;
  s.ask_sgrs = true;
  s.ask_saliency = true;
  const StudioSettings back = StudioSettings::from_json(s.to_json(), "t");
  EXPECT_EQ(back.to_json(), s.to_json());
  EXPECT_EQ(back.image_prompts.size(), 2u);
  EXPECT_EQ(back.image_prompts[1].preset, "composition");
}

TEST(StudioSettings, SaveLoadAndMissingFileGivesDefaults) {
  const std::string path = scratch("cfg/sub/studio.json");
  EXPECT_EQ(load_settings(path).to_json(), StudioSettings{}.to_json());
  StudioSettings s;
  s.prompt = "ünïcode prompt";
  s.steps = 7;
  save_settings(path, s);
  EXPECT_EQ(load_settings(path).prompt, "ünïcode prompt");
  EXPECT_EQ(load_settings(path).steps, 7);
}

TEST(StudioSettings, BadFilesNameTheKey) {
  const std::string path = scratch("studio.json");
  std::ofstream(path) << R"({"steps": "many"})";
  try {
    load_settings(path);
    FAIL() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("steps"), std::string::npos) << e.what();
  }
  std::ofstream(path) << R"({"sampler": "plms", "future_key": 1})";
  EXPECT_THROW(load_settings(path), ConfigError);
  std::ofstream(path) << "{not json";
  EXPECT_THROW(load_settings(path), FormatError);
  std::ofstream(path) << R"({"future_key": [1, 2], "steps": 9})";  // unknown keys are ignored
  EXPECT_EQ(load_settings(path).steps, 9);
}

TEST(StudioSettings, SetParsesByFieldType) {
  StudioSettings s;
  s.set("prompt", "a cat, 4k");
  s.set("steps", "12");
  s.set("cfg", "3.25");
  s.set("karras", "true");
  s.set("size", "96x64");
  s.set("seed", "42");
  s.set("random_seed", "off");
  EXPECT_EQ(s.prompt, "a cat, 4k");
  EXPECT_EQ(s.steps, 12);
  EXPECT_DOUBLE_EQ(s.cfg, 3.25);
  EXPECT_TRUE(s.karras);
  EXPECT_EQ(s.width, 96);
  EXPECT_EQ(s.height, 64);
  EXPECT_EQ(s.seed, 42);
  EXPECT_FALSE(s.random_seed);
  const Json before = s.to_json();
  EXPECT_THROW(s.set("steps", "12.5"), ConfigError);
  EXPECT_THROW(s.set("steps", "0"), ConfigError);
  EXPECT_THROW(s.set("size", "100x64"), ConfigError);  // not a multiple of 8
  EXPECT_THROW(s.set("size", "big"), ConfigError);
  EXPECT_THROW(s.set("size", "0x64"), ConfigError);  // one side the model's, one not
  EXPECT_THROW(s.set("karras", "maybe"), ConfigError);
  EXPECT_THROW(s.set("no_such_key", "1"), ConfigError);
  EXPECT_THROW(s.set("sampler", "plms"), ConfigError);
  EXPECT_EQ(s.to_json(), before);  // failed sets change nothing
  s.set("size", "auto");  // the model's native size, resolved when it renders
  EXPECT_EQ(s.width, 0);
  EXPECT_EQ(s.height, 0);
  EXPECT_EQ(StudioSettings().width, 0);  // the default: a 64 px pack is not asked for 512 px
}

TEST(StudioSettings, DefaultPathFollowsEnvironment) {
  ::setenv("IRIS_STUDIO_CONFIG", "/tmp/x/studio.json", 1);
  EXPECT_EQ(default_settings_path(), "/tmp/x/studio.json");
  ::unsetenv("IRIS_STUDIO_CONFIG");
  ::setenv("XDG_CONFIG_HOME", "/cfg", 1);
  EXPECT_EQ(default_settings_path(), "/cfg/iris/studio.json");
  ::unsetenv("XDG_CONFIG_HOME");
}

TEST(StudioSettings, ParamsToAndFromSettings) {
  StudioSettings s;
  s.model = "/models/tiny-sd";
  s.prompt = "p";
  s.steps = 4;
  s.use_skeleton = true;
  s.skeleton = "/poses/star.json";
  s.skeleton_scale = 0.7;
  const world::Skeleton sk = world::default_skeleton_2d();
  GenerationParams p = make_generation_params(s, 99, &sk);
  EXPECT_EQ(p.seed, 99u);
  EXPECT_EQ(p.model_name, "tiny-sd");
  ASSERT_TRUE(p.skeleton.has_value());
  EXPECT_EQ(p.skeleton_name, "star.json");
  s.image_prompts = {{scratch("missing.png"), 1.0, "all"}};
  EXPECT_THROW(make_generation_params(s, 1, nullptr), IoError);  // names the missing file

  StudioSettings r;
  apply_params(p, r);
  EXPECT_EQ(r.prompt, "p");
  EXPECT_EQ(r.steps, 4);
  EXPECT_FALSE(r.random_seed);
  EXPECT_EQ(r.seed, 99);
  EXPECT_TRUE(r.use_skeleton);
  EXPECT_DOUBLE_EQ(r.skeleton_scale, 0.7);
}

// ---- scripts ----

TEST(StudioScript, AskAboutResultIsAButton) {
  const auto c = parse_script("press ask_about_result\n", "s.txt");
  ASSERT_EQ(c.size(), 1u);
  EXPECT_EQ(c[0].args, std::vector<std::string>{"ask_about_result"});
}

TEST(StudioScript, ParsesCommands) {
  const auto c = parse_script(
      "# demo\n\nset prompt \"a red fox\"\nset size 64x32\nadd_image_prompt /r.png 0.5 style\n"
      "tab gallery\npress generate\nwait 30\nwait_step 2\nexpect done\nframes 3\nscreenshot out.png\nquit\n",
      "demo.txt");
  ASSERT_EQ(c.size(), 11u);
  EXPECT_EQ(c[0].line, 3);
  EXPECT_EQ(c[0].args, (std::vector<std::string>{"prompt", "a red fox"}));
  EXPECT_EQ(c[1].args[1], "64x32");
  EXPECT_EQ(c[2].args.size(), 3u);
  EXPECT_DOUBLE_EQ(c[5].seconds, 30);
  EXPECT_EQ(c[6].count, 2);
  EXPECT_EQ(c[8].count, 3);
  EXPECT_EQ(c[9].args[0], "out.png");
}

TEST(StudioScript, ErrorsNameFileAndLine) {
  auto message = [](const std::string& text) {
    try {
      parse_script(text, "s.txt");
    } catch (const FormatError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_EQ(message("set steps 3\nfly away\n").rfind("s.txt:2: unknown command", 0), 0u) << message("fly away");
  EXPECT_NE(message("press launch").find("s.txt:1"), std::string::npos);
  EXPECT_NE(message("wait soon").find("not a non-negative number"), std::string::npos);
  EXPECT_NE(message("tab settings").find("unknown tab"), std::string::npos);
  EXPECT_NE(message("set").find("usage"), std::string::npos);
  EXPECT_NE(message("add_image_prompt a.png 1 sideways").find("preset"), std::string::npos);
}

struct FakeHost : ScriptHost {
  StudioSettings s;
  std::vector<std::string> pressed, tabs, shots;
  bool is_busy = false;
  int step = 0;
  std::string outcome;
  StudioSettings& settings() override { return s; }
  void select_tab(const std::string& t) override { tabs.push_back(t); }
  void press(const std::string& b) override {
    if (b == "generate" && s.model.empty()) throw ConfigError("no model");
    pressed.push_back(b);
    if (b == "generate") is_busy = true;
  }
  bool busy() const override { return is_busy; }
  int denoise_step() const override { return step; }
  std::string last_outcome() const override { return outcome; }
  void request_screenshot(const std::string& p) override { shots.push_back(p); }
};

TEST(StudioScript, RunnerWaitsForTheWorkerAndCapturesAtTheEnd) {
  FakeHost h;
  ScriptRunner r(parse_script("set model /m\nset steps 5\npress generate\nwait_step 3\nwait 10\nexpect done\n", "s"),
                 "s", "final.png");
  r.step(h, 0.0);
  EXPECT_EQ(h.s.steps, 5);
  EXPECT_EQ(h.pressed, std::vector<std::string>{"generate"});
  EXPECT_FALSE(r.finished());
  h.step = 3;  // wait_step passes, wait keeps waiting
  r.step(h, 1.0);
  EXPECT_FALSE(r.finished());
  h.is_busy = false;
  h.outcome = "done";
  for (int frame = 0; frame < 5 && !r.finished(); ++frame) r.step(h, 2.0);
  EXPECT_TRUE(r.finished());
  EXPECT_EQ(r.error(), "");
  EXPECT_EQ(h.shots, std::vector<std::string>{"final.png"});
}

TEST(StudioScript, RunnerReportsFailures) {
  {
    FakeHost h;
    ScriptRunner r(parse_script("set steps 3\npress generate\n", "a.txt"), "a.txt", "");
    r.step(h, 0);
    EXPECT_TRUE(r.finished());
    EXPECT_EQ(r.error(), "a.txt:2: no model");
  }
  {
    FakeHost h;
    h.s.model = "/m";
    ScriptRunner r(parse_script("press generate\nwait 5\n", "b.txt"), "b.txt", "");
    r.step(h, 0);
    r.step(h, 4);
    EXPECT_FALSE(r.finished());
    r.step(h, 6);
    EXPECT_TRUE(r.finished());
    EXPECT_NE(r.error().find("b.txt:2: wait: still running"), std::string::npos) << r.error();
  }
  {
    FakeHost h;
    h.outcome = "cancelled";
    ScriptRunner r(parse_script("expect done\n", "c.txt"), "c.txt", "");
    r.step(h, 0);
    EXPECT_NE(r.error().find("it is cancelled"), std::string::npos) << r.error();
  }
  {
    FakeHost h;
    ScriptRunner r(parse_script("set steps 2000\n", "d.txt"), "d.txt", "");
    r.step(h, 0);
    EXPECT_NE(r.error().find("steps"), std::string::npos);
    EXPECT_EQ(h.s.steps, 25);
  }
}

TEST(StudioScript, QuitStillCapturesTheScreenshot) {
  FakeHost h;
  ScriptRunner r(parse_script("quit\nset steps 9\n", "q"), "q", "shot.png");
  for (int i = 0; i < 5 && !r.finished(); ++i) r.step(h, 0);
  EXPECT_TRUE(r.finished());
  EXPECT_EQ(h.s.steps, 25);  // commands after quit do not run
  EXPECT_EQ(h.shots, std::vector<std::string>{"shot.png"});
}

// ---- skeleton editing ----

TEST(StudioSkeleton, EditOperations) {
  world::Skeleton s = world::default_skeleton_2d();
  const auto& head = s.joints[world::joint::Head];
  EXPECT_EQ(nearest_joint(s, head.x + 0.001, head.y, 0.02), world::joint::Head);
  EXPECT_EQ(nearest_joint(s, 0.02, 0.98, 0.02), -1);

  const int a = add_joint(s, "tail", 0.5, 0.9);
  const int b = add_joint(s, "tail", 0.6, 1.7);  // clamped; name made unique
  EXPECT_EQ(s.joints[b].name, "tail_2");
  EXPECT_DOUBLE_EQ(s.joints[b].y, 1.0);
  EXPECT_TRUE(toggle_bone(s, a, b));
  EXPECT_FALSE(toggle_bone(s, b, a));  // same bone either way round: removed
  EXPECT_THROW(toggle_bone(s, a, a), ConfigError);
  EXPECT_THROW(toggle_bone(s, a, 99), ConfigError);

  const size_t edges = s.edges.size();
  remove_joint(s, world::joint::Neck);  // 5 bones touch the neck (head, shoulders, hips)
  EXPECT_EQ(s.edges.size(), edges - 5);
  for (auto [x, y] : s.edges) {
    EXPECT_LT(x, static_cast<int>(s.joints.size()));
    EXPECT_LT(y, static_cast<int>(s.joints.size()));
  }
  EXPECT_EQ(s.find("neck"), -1);
  // The file format still accepts the edited skeleton.
  EXPECT_NO_THROW(world::parse_skeleton(world::skeleton_to_json(s), "edited"));
}

TEST(StudioSkeleton, MirrorSwapsSidesAndIsAnInvolution) {
  world::PoseParams pose;
  pose.arms = world::ArmPose::LeftUp;
  const world::Skeleton original = world::make_pose(pose);
  world::Skeleton m = original;
  mirror(m);
  const auto& lw = original.joints[world::joint::LeftWrist];
  const auto& rw = m.joints[world::joint::RightWrist];
  EXPECT_NEAR(rw.x, 1.0 - lw.x, 1e-12);  // the raised left arm is now the right one
  EXPECT_NEAR(rw.y, lw.y, 1e-12);
  mirror(m);
  for (size_t i = 0; i < m.joints.size(); ++i) {
    EXPECT_NEAR(m.joints[i].x, original.joints[i].x, 1e-12);
    EXPECT_NEAR(m.joints[i].y, original.joints[i].y, 1e-12);
  }
}

TEST(StudioSkeleton, PresetsIncludeTheAssets) {
  const auto presets = skeleton_presets(std::string(IRIS_ASSETS_DIR) + "/skeletons");
  ASSERT_FALSE(presets.empty());
  EXPECT_EQ(presets[0].name, "default");
  const auto none = skeleton_presets(scratch("no_such_dir"));
  EXPECT_EQ(none.size(), 1u);
}

// ---- gallery ----

TEST(StudioGallery, IndexesPngsByTheirMetadata) {
  const auto dir = scratch_dir() / "out";
  std::filesystem::create_directories(dir / "sub");
  GenerationParams p;
  p.prompt = "first";
  p.steps = 3;
  p.width = 16;
  p.height = 8;
  Image img(16, 8, 3);
  save_png((dir / "a.png").string(), img, generation_metadata(p, 11));
  p.prompt = "second";
  save_png((dir / "b.png").string(), img, generation_metadata(p, 12));
  save_png((dir / "plain.png").string(), img);  // no parameters
  std::ofstream(dir / "broken.png") << "not a png";
  std::ofstream(dir / "notes.txt") << "x";
  std::vector<std::string> skipped;
  const auto entries = scan_gallery(dir.string(), &skipped);
  ASSERT_EQ(entries.size(), 2u);
  EXPECT_EQ(skipped.size(), 2u);
  std::set<std::string> prompts{entries[0].params.prompt, entries[1].params.prompt};
  EXPECT_EQ(prompts, (std::set<std::string>{"first", "second"}));
  for (const auto& e : entries) {
    EXPECT_EQ(e.params.steps, 3);
    EXPECT_NE(e.parameters.find("Steps: 3"), std::string::npos);
    EXPECT_EQ(e.params.seed, e.params.prompt == "first" ? 11u : 12u);
  }
  EXPECT_TRUE(scan_gallery(scratch("nowhere")).empty());

  const auto listing = list_folder(dir.string(), {".png"});
  EXPECT_EQ(listing, (std::vector<std::string>{"sub/", "a.png", "b.png", "broken.png", "plain.png"}));
  EXPECT_THROW(list_folder(scratch("nowhere"), {}), IoError);
}

// ---- worker ----

TEST(StudioWorker, LatentPreviewAndOutputNames) {
  at::Tensor lat = at::zeros({4, 3, 5});
  Image img = latent_preview(lat);
  EXPECT_EQ(img.width, 5);
  EXPECT_EQ(img.height, 3);
  EXPECT_EQ(img.at(0, 0, 0), 128);  // zero latents: mid grey
  lat.select(0, 0).fill_(3.0);      // channel 0 is brightness
  EXPECT_GT(latent_preview(lat).at(2, 1, 1), 200);
  EXPECT_THROW(latent_preview(at::zeros({4, 3})), ShapeError);

  const std::string dir = scratch_dir().string();
  const std::string a = unique_output_path(dir, 7);
  std::ofstream(a) << "x";
  const std::string b = unique_output_path(dir, 7);
  EXPECT_NE(a, b);
  EXPECT_NE(a.find("-7.png"), std::string::npos);
}

const std::string& tiny_model_dir() {
  static const std::string dir = [] {
    const std::string d = (std::filesystem::path(::testing::TempDir()) / ("iris_studio_model_" + std::to_string(::getpid()))).string();
    write_random_sd_pipeline(d, tiny_sd_spec(std::string(IRIS_FIXTURES_DIR) + "/data/clip_tokenizer"));
    return d;
  }();
  return dir;
}

GenerationJob tiny_job(int steps, const std::string& out) {
  GenerationJob job;
  job.model.model = tiny_model_dir();
  job.params.prompt = "a small test";
  job.params.steps = steps;
  job.params.width = 32;
  job.params.height = 24;
  job.params.seed = 5;
  job.params.model_name = "tiny";
  job.output_dir = out;
  job.threads = 1;
  return job;
}

void wait_idle(GenerationWorker& w, double seconds) {
  const auto t0 = std::chrono::steady_clock::now();
  while (w.busy() && std::chrono::steady_clock::now() - t0 < std::chrono::duration<double>(seconds))
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
}

TEST(StudioWorker, GeneratesSavesWithMetadataAndPreviews) {
  GenerationWorker w;
  const std::string out = scratch("results");
  w.start(tiny_job(3, out));
  EXPECT_TRUE(w.busy());
  EXPECT_THROW(w.start(tiny_job(3, out)), ConfigError);  // one job at a time
  wait_idle(w, 60);
  const WorkerStatus st = w.status();
  ASSERT_EQ(st.state, JobState::Done) << st.message;
  EXPECT_EQ(st.step, 3);
  Image preview;
  ASSERT_TRUE(w.take_preview(preview));
  EXPECT_EQ(preview.width, 16);  // latent resolution (the tiny VAE halves)
  EXPECT_FALSE(w.take_preview(preview));
  const auto results = w.take_results();
  ASSERT_EQ(results.size(), 1u);
  EXPECT_TRUE(w.take_results().empty());
  const GalleryEntry e = read_gallery_entry(results[0].path);
  EXPECT_EQ(e.params.prompt, "a small test");
  EXPECT_EQ(e.params.seed, 5u);
  EXPECT_EQ(e.params.steps, 3);
  EXPECT_EQ(e.params.width, 32);
  EXPECT_EQ(load_image(results[0].path).pixels, results[0].image.pixels);

  // A second job reuses the loaded model.
  w.start(tiny_job(1, out));
  wait_idle(w, 60);
  EXPECT_EQ(w.status().state, JobState::Done);
  EXPECT_EQ(w.take_results().size(), 1u);
}

TEST(StudioWorker, CancelStopsWithinAStepAndErrorsAreReported) {
  GenerationWorker w;
  const std::string out = scratch("results");
  w.start(tiny_job(400, out));
  const auto t0 = std::chrono::steady_clock::now();
  while (w.status().step < 1 && std::chrono::steady_clock::now() - t0 < std::chrono::seconds(60))
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  w.cancel();
  wait_idle(w, 30);
  const WorkerStatus st = w.status();
  EXPECT_EQ(st.state, JobState::Cancelled);
  EXPECT_LT(st.step, 10);  // stopped right away, not after 400 steps
  EXPECT_TRUE(w.take_results().empty());
  EXPECT_FALSE(std::filesystem::exists(out) && !std::filesystem::is_empty(out));

  GenerationJob bad = tiny_job(2, out);
  bad.model.model = scratch("no_model_here");
  w.start(bad);
  wait_idle(w, 30);
  EXPECT_EQ(w.status().state, JobState::Failed);
  EXPECT_NE(w.status().message.find("no_model_here"), std::string::npos) << w.status().message;

  GenerationJob odd = tiny_job(2, out);
  odd.params.width = 33;
  w.start(odd);
  wait_idle(w, 30);
  EXPECT_EQ(w.status().state, JobState::Failed);
}

TEST(StudioAsk, SettingsBecomeOptionsAndBadOnesNameTheKey) {
  StudioSettings s;
  s.max_new_tokens = 7;
  s.ask_var = true;
  s.ask_var_sink_dims = " 47,252 ";
  s.ask_var_p = 0.25;
  s.ask_locore = true;
  s.ask_locore_beta = 0.5;
  s.ask_sgrs = true;
  s.ask_saliency = true;
  s.ask_draft = "/d";
  s.ask_draft_chain = 4;
  const VlmAskOptions o = ask_options_from_settings(s);
  EXPECT_EQ(o.vqa.max_new_tokens, 7);
  EXPECT_EQ(o.vqa.faithfulness.var_options.sink_dims, (std::vector<int64_t>{47, 252}));
  EXPECT_DOUBLE_EQ(o.vqa.faithfulness.var_options.p, 0.25);
  EXPECT_TRUE(o.vqa.faithfulness.locore && o.vqa.faithfulness.sgrs && o.vqa.saliency_map);
  EXPECT_DOUBLE_EQ(o.vqa.faithfulness.locore_options.beta, 0.5);
  EXPECT_EQ(o.draft, "/d");
  EXPECT_EQ(o.draft_chain, 4);
  EXPECT_TRUE(parse_sink_dims("", "x").empty());
  for (const char* bad : {"47;252", "a", "47,", "-3"}) {
    try {
      parse_sink_dims(bad, "ask_var_sink_dims");
      ADD_FAILURE() << bad;
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find("ask_var_sink_dims"), std::string::npos) << e.what();
    }
  }
  StudioSettings t;
  EXPECT_THROW(t.set("ask_var_p", "1.5"), ConfigError);
  EXPECT_THROW(t.set("ask_visor_budget", "-2"), ConfigError);
  EXPECT_THROW(t.set("ask_var_sink_dims", "x,y"), ConfigError);
  EXPECT_THROW(t.set("ask_locore_beta", "-1"), ConfigError);
  EXPECT_THROW(t.set("ask_draft_chain", "65"), ConfigError);
  EXPECT_THROW(t.set("new_style_steps", "0"), ConfigError);
  t.set("ask_saliency", "on");
  EXPECT_TRUE(t.ask_saliency);
}

void wait_ask(AskWorker& w, int seconds) {
  const auto t0 = std::chrono::steady_clock::now();
  while (w.busy() && std::chrono::steady_clock::now() - t0 < std::chrono::seconds(seconds))
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  w.wait();
}

TEST(StudioAsk, WorkerAnswersWithMethodsAndAHeatMapAndReportsConflicts) {
  const std::string dir = scratch("llava");
  RandomLlavaSpec spec = tiny_llava_spec(false);
  spec.seed = 5;
  write_random_llava(dir, spec);
  Image picture(40, 30, 3);
  for (size_t i = 0; i < picture.pixels.size(); ++i) picture.pixels[i] = static_cast<uint8_t>(i * 29 % 251);
  StudioSettings s;
  s.max_new_tokens = 5;
  s.ask_locore = true;
  s.ask_saliency = true;
  AskJob job;
  job.model = dir;
  job.image = picture;
  job.question = "What is this?";
  job.options = ask_options_from_settings(s);
  job.threads = 1;
  AskWorker w;
  w.start(job);
  wait_ask(w, 60);
  AskStatus st = w.status();
  ASSERT_EQ(st.state, JobState::Done) << st.message;
  EXPECT_FALSE(st.answer.empty());
  EXPECT_NE(st.stats.find("generated tokens"), std::string::npos) << st.stats;
  EXPECT_NE(st.stats.find("methods: locore(beta=0.15"), std::string::npos) << st.stats;
  ASSERT_FALSE(st.saliency.empty());
  EXPECT_EQ(st.saliency.width, 256);  // the 30-pixel square the model saw, enlarged
  EXPECT_EQ(st.finished, 1);

  // A draft with the methods on: one clear failure, and the worker stays usable.
  AskJob conflict = job;
  conflict.options.draft = dir;
  w.start(conflict);
  wait_ask(w, 60);
  st = w.status();
  EXPECT_EQ(st.state, JobState::Failed);
  EXPECT_NE(st.message.find("not with a ViSpec draft"), std::string::npos) << st.message;
  AskJob plain = job;
  plain.options = VlmAskOptions{};
  plain.options.vqa.max_new_tokens = 5;
  w.start(plain);
  wait_ask(w, 60);
  st = w.status();
  EXPECT_EQ(st.state, JobState::Done) << st.message;
  EXPECT_TRUE(st.saliency.empty());
  EXPECT_EQ(st.stats.find("methods:"), std::string::npos) << st.stats;
  EXPECT_EQ(st.finished, 3);
}

TEST(StudioStyleTraining, BadOptionsFailAtStartAndLoadErrorsAreReported) {
  StyleTrainWorker w;
  NewStyleOptions o;
  o.model = scratch("no-model-here");
  o.adapter = scratch("no-adapter.safetensors");
  o.images = scratch("style-images");
  o.name = "bad name";  // a space
  EXPECT_THROW(w.start(o, 1), ConfigError);
  EXPECT_FALSE(w.busy());
  o.name = "ok";
  std::filesystem::create_directories(o.images);
  Image img(16, 16, 3);
  save_png(o.images + "/a.png", img);
  w.start(o, 1);
  w.wait();
  const StyleTrainStatus st = w.status();
  EXPECT_EQ(st.state, JobState::Failed);
  EXPECT_NE(st.message.find("no-model-here"), std::string::npos) << st.message;
  EXPECT_EQ(st.finished, 1);
  EXPECT_FALSE(w.busy());
}

}  // namespace
}  // namespace iris::studio
