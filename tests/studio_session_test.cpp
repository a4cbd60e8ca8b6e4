// A scripted iris-studio session under xvfb-run (Mesa software OpenGL): generate with a tiny
// random model, capture the window, and check the screenshot is a real picture and the saved
// PNG carries exactly the script's settings. Registered only where iris-studio and xvfb-run
// exist (tests/CMakeLists.txt).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <sys/wait.h>

#include "core/image.h"
#include "core/mmap_file.h"
#include "core/png_text.h"
#include "adapters/style_adapter.h"
#include "pipelines/random_model.h"
#include "pipelines/stable_diffusion.h"
#include "test_util.h"

namespace iris {
namespace {

namespace fs = std::filesystem;
using testing_util::scratch;
using testing_util::scratch_dir;

struct StudioRun {
  int status = -1;
  std::string log;
};

// Runs a script in the studio on a fresh virtual X server; stdout + stderr go to the log.
StudioRun run_studio(const std::string& script_text, const std::string& screenshot) {
  const std::string script = scratch("session.txt"), log = scratch("studio.log");
  std::ofstream(script) << script_text;
  const std::string cmd = "IRIS_STUDIO_CONFIG='" + scratch("config/studio.json") + "' '" + IRIS_XVFB_RUN +
                          "' -a -s '-screen 0 1280x800x24' '" + IRIS_STUDIO + "' --script '" + script +
                          "' --screenshot '" + screenshot + "' > '" + log + "' 2>&1";
  StudioRun r;
  const int rc = std::system(cmd.c_str());
  r.status = WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
  r.log = read_text_file(log);
  return r;
}

std::string tiny_model() {
  const std::string dir = scratch("tiny-sd");
  write_random_sd_pipeline(dir, tiny_sd_spec(std::string(IRIS_FIXTURES_DIR) + "/data/clip_tokenizer"));
  return dir;
}

TEST(StudioSession, GeneratesCapturesAndSavesTheScriptSettings) {
  const std::string model = tiny_model(), out = scratch("out"), shot = scratch("shot.png");
  const std::string script =
      "# a whole session: settings, Generate, wait, capture\n"
      "set model " + model + "\n"
      "set output_dir " + out + "\n"
      "set prompt \"a scripted fox, watercolor\"\n"
      "set negative blurry\n"
      "set sampler euler\n"
      "set steps 3\n"
      "set cfg 6.5\n"
      "set random_seed false\n"
      "set seed 4242\n"
      "set size 64x48\n"
      "set threads 1\n"
      "press generate\n"
      "wait 120\n"
      "expect done\n";
  const StudioRun r = run_studio(script, shot);
  ASSERT_EQ(r.status, 0) << r.log;

  // The screenshot is the whole window and not blank: many colours, real contrast.
  const Image img = load_image(shot);
  EXPECT_EQ(img.width, 1280);
  EXPECT_EQ(img.height, 800);
  double sum = 0, sum2 = 0;
  std::set<uint32_t> colours;
  for (size_t i = 0; i < img.pixels.size(); i += 3) {
    const double y = 0.299 * img.pixels[i] + 0.587 * img.pixels[i + 1] + 0.114 * img.pixels[i + 2];
    sum += y;
    sum2 += y * y;
    colours.insert(img.pixels[i] << 16 | img.pixels[i + 1] << 8 | img.pixels[i + 2]);
  }
  const double n = img.pixels.size() / 3.0, mean = sum / n, stddev = std::sqrt(std::max(0.0, sum2 / n - mean * mean));
  EXPECT_GT(stddev, 8.0) << "screenshot looks blank";
  EXPECT_GT(colours.size(), 200u) << "screenshot has too few colours to show text and a generated image";

  // Exactly one result, whose metadata is the script's settings.
  std::vector<fs::path> pngs;
  for (const auto& e : fs::directory_iterator(out)) pngs.push_back(e.path());
  ASSERT_EQ(pngs.size(), 1u);
  const GenerationParams p = params_from_metadata(read_png_text(pngs[0].string()), pngs[0].string());
  EXPECT_EQ(p.prompt, "a scripted fox, watercolor");
  EXPECT_EQ(p.negative_prompt, "blurry");
  EXPECT_EQ(p.sampler, "euler");
  EXPECT_EQ(p.steps, 3);
  EXPECT_DOUBLE_EQ(p.cfg_scale, 6.5);
  EXPECT_EQ(p.seed, 4242u);
  EXPECT_EQ(p.width, 64);
  EXPECT_EQ(p.height, 48);
  EXPECT_EQ(p.model_name, "tiny-sd");
  const Image result = load_image(pngs[0].string());
  EXPECT_EQ(result.width, 64);
  EXPECT_EQ(result.height, 48);
  // Scripted sessions never overwrite the user's settings file.
  EXPECT_FALSE(fs::exists(scratch("config/studio.json")));
}

TEST(StudioSession, CancelStopsTheGenerationAndBadScriptsFail) {
  const std::string model = tiny_model(), out = scratch("out");
  const StudioRun r = run_studio("set model " + model + "\nset output_dir " + out +
                               "\nset size 32x32\nset steps 500\nset threads 1\npress generate\nwait_step 1 60\n"
                               "press cancel\nwait 30\nexpect cancelled\n",
                           scratch("cancel.png"));
  EXPECT_EQ(r.status, 0) << r.log;
  EXPECT_FALSE(fs::exists(out) && !fs::is_empty(out));
  EXPECT_TRUE(fs::exists(scratch("cancel.png")));

  // A script error names the line; the process fails.
  const StudioRun bad = run_studio("set steps 3\nexpect done\n", scratch("bad.png"));
  EXPECT_NE(bad.status, 0);
  EXPECT_NE(bad.log.find("session.txt:2"), std::string::npos) << bad.log;
  const StudioRun unknown = run_studio("launch rockets\n", scratch("unknown.png"));
  EXPECT_NE(unknown.status, 0);
  EXPECT_NE(unknown.log.find("session.txt:1: unknown command"), std::string::npos) << unknown.log;
}

#ifdef IRIS_ASSETS_DIR
// The starter pack in the studio: a generation whose PNG carries the script's settings, then
// the Ask tab on that result with LocoRE and the saliency heat map (issue 10's second script).
TEST(StudioSession, PackGeneratesThenAsksWithTheSaliencyMap) {
  const std::string pack = std::string(IRIS_ASSETS_DIR) + "/starter";
  if (!fs::exists(pack + "/model_index.json") || !fs::exists(pack + "/vlm/config.json"))
    GTEST_SKIP() << "no starter pack in " << pack;
  const std::string out = scratch("pack-out"), shot = scratch("pack-ask.png");
  const std::string script =
      "set model " + pack + "\n"
      "set output_dir " + out + "\n"
      "set prompt \"a large red circle at the top left and a blue square at the bottom right\"\n"
      "set sampler euler\nset steps 8\nset cfg 4\nset random_seed false\nset seed 42\nset size 64x64\n"
      "press generate\nwait 300\nexpect done\nframes 2\n"
      "press ask_about_result\n"
      "set vlm " + pack + "/vlm\n"
      "set question \"Describe the image.\"\nset max_new_tokens 24\n"
      "set ask_locore true\nset ask_saliency true\n"
      "press ask\nwait 300\nexpect done\nframes 3\n";
  const StudioRun r = run_studio(script, shot);
  ASSERT_EQ(r.status, 0) << r.log;
  // The answer, its stats, the method and the heat map were reported.
  EXPECT_NE(r.log.find("answer (done): "), std::string::npos) << r.log;
  EXPECT_NE(r.log.find("generated tokens"), std::string::npos) << r.log;
  EXPECT_NE(r.log.find("methods: locore(beta=0.15"), std::string::npos) << r.log;
  EXPECT_NE(r.log.find("saliency heat map: 256x256"), std::string::npos) << r.log;
  // The screenshot is a real picture.
  const Image img = load_image(shot);
  std::set<uint32_t> colours;
  for (size_t i = 0; i < img.pixels.size(); i += 3)
    colours.insert(img.pixels[i] << 16 | img.pixels[i + 1] << 8 | img.pixels[i + 2]);
  EXPECT_GT(colours.size(), 300u) << "screenshot has too few colours for the result and its heat map";
  // One result, whose metadata is the script's.
  std::vector<fs::path> pngs;
  for (const auto& e : fs::directory_iterator(out)) pngs.push_back(e.path());
  ASSERT_EQ(pngs.size(), 1u);
  const GenerationParams p = params_from_metadata(read_png_text(pngs[0].string()), pngs[0].string());
  EXPECT_EQ(p.prompt, "a large red circle at the top left and a blue square at the bottom right");
  EXPECT_EQ(p.steps, 8);
  EXPECT_EQ(p.seed, 42u);
  EXPECT_EQ(p.sampler, "euler");
  EXPECT_EQ(p.width, 64);
}

// "Train a new style from images" in the Style section: a scripted run against the pack's style
// adapter (copied, so the new style lands in scratch), then the style is listed and usable.
TEST(StudioSession, TrainsANewStyleFromAFolderWithTheLossPlot) {
  const std::string pack = std::string(IRIS_ASSETS_DIR) + "/starter";
  if (!fs::exists(pack + "/adapters/style-adapter.safetensors")) GTEST_SKIP() << "no starter pack in " << pack;
  const std::string adapters = scratch("adapters");
  fs::create_directories(adapters);
  fs::copy_file(pack + "/adapters/style-adapter.safetensors", adapters + "/style-adapter.safetensors");
  const std::string images = scratch("style-images");
  fs::create_directories(images);
  for (int i = 0; i < 4; ++i) {  // a made-up style: bold diagonal stripes
    Image img(64, 64, 3);
    for (int y = 0; y < 64; ++y)
      for (int x = 0; x < 64; ++x)
        for (int c = 0; c < 3; ++c) img.at(x, y, c) = ((x + y + 4 * i) / 6) % 2 ? 230 : static_cast<uint8_t>(40 * c);
    save_png(images + "/s" + std::to_string(i) + ".png", img);
  }
  const std::string script = "set model " + pack + "\nset style_adapter " + adapters +
                             "/style-adapter.safetensors\nset new_style_images " + images +
                             "\nset new_style_name diagonal\nset new_style_steps 12\nset threads 1\n"
                             "press train_style\nwait 300\nexpect done\nframes 3\n";
  const StudioRun r = run_studio(script, scratch("style-train.png"));
  ASSERT_EQ(r.status, 0) << r.log;
  ASSERT_TRUE(fs::is_regular_file(adapters + "/styles/diagonal.safetensors")) << r.log;
  const StyleFile made = load_style(adapters + "/styles/diagonal.safetensors");
  EXPECT_EQ(made.name, "diagonal");
  EXPECT_TRUE(at::isfinite(made.embedding).all().item<bool>());
  // A bad name fails the script with the reason.
  const StudioRun bad = run_studio("set model " + pack + "\nset style_adapter " + adapters +
                                       "/style-adapter.safetensors\nset new_style_images " + images +
                                       "\nset new_style_name \"two words\"\npress train_style\n",
                                   scratch("style-bad.png"));
  EXPECT_NE(bad.status, 0);
  EXPECT_NE(bad.log.find("--name"), std::string::npos) << bad.log;
}
#endif

}  // namespace
}  // namespace iris
