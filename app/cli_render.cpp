// iris render: text-to-image and image-to-image from the command line.
#include <cstdio>
#include <filesystem>
#include <random>

#include "app/cli.h"
#include "app/progress_bar.h"
#include "core/error.h"
#include "core/runtime.h"
#include "pipelines/image_size.h"
#include "pipelines/random_model.h"
#include "pipelines/stable_diffusion.h"

namespace iris::cli {

namespace {

// out.png -> out.png for one image, out-<seed>.png for several.
std::string output_name(const std::string& out, uint64_t seed, bool several) {
  if (!several) return out;
  std::filesystem::path p(out);
  return (p.parent_path() / (p.stem().string() + "-" + std::to_string(seed) + p.extension().string())).string();
}

}  // namespace

void add_render_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("render", "Generate images from a prompt (and an init image)");
  struct Opts {
    SdModelCliOptions m;
    std::string out = "out.png", size = "auto", init, ip_preset = "all", skeleton;
    std::vector<std::string> image_prompts;
    std::vector<double> ip_scales;
    GenerationParams p;
    int64_t seed = -1;
  };
  auto o = std::make_shared<Opts>();
  add_sd_model_options(cmd, o->m);
  cmd->add_option("--prompt,-p", o->p.prompt, "What to draw")->required();
  cmd->add_option("--negative,-n", o->p.negative_prompt, "What to avoid");
  cmd->add_option("--sampler", o->p.sampler, "ddim | euler | euler_a | dpmpp_2m | lcm")->capture_default_str();
  cmd->add_flag("--karras", o->p.karras, "Karras sigmas (euler, euler_a, dpmpp_2m)");
  cmd->add_option("--eta", o->p.eta, "DDIM eta");
  cmd->add_option("--steps", o->p.steps, "Denoising steps")->capture_default_str();
  cmd->add_option("--cfg", o->p.cfg_scale, "Classifier-free guidance scale (<= 1: off)")->capture_default_str();
  cmd->add_option("--seed", o->seed, "Seed (default: random; printed)");
  cmd->add_option("--size", o->size, "WIDTHxHEIGHT, multiples of 8; auto: the model's native size (512x512 for SD 1.5)")
      ->capture_default_str();
  cmd->add_option("--batch", o->p.batch, "Images (seeds seed, seed+1, ...)")->capture_default_str();
  cmd->add_option("--init", o->init, "Init image for image-to-image");
  cmd->add_option("--strength", o->p.strength, "Image-to-image strength in (0, 1]")->capture_default_str();
  cmd->add_option("--image-prompt", o->image_prompts, "Reference image(s) for the IP-Adapter (repeatable)");
  cmd->add_option("--ip-scale", o->ip_scales, "IP-Adapter scale, one for all or one per image prompt");
  cmd->add_option("--ip-preset", o->ip_preset, "Per-layer scales: all | style | composition")->capture_default_str();
  cmd->add_option("--style", o->p.style, "Style: a bank name, NAME for styles/NAME.safetensors beside the adapter, or a file");
  cmd->add_option("--style-strength", o->p.style_strength, "Style strength (0: off)")->capture_default_str();
  cmd->add_option("--skeleton", o->skeleton, "Skeleton JSON (iris.skeleton format; see assets/skeletons/)");
  cmd->add_option("--skeleton-scale", o->p.skeleton_scale, "Skeleton stream scale (0: off)")->capture_default_str();
  cmd->add_option("--skeleton-camera", o->p.skeleton_camera_distance,
                  "Camera distance for 3D skeletons (default: the file's camera, else z is dropped)");
  cmd->add_option("-o,--output", o->out, "Output PNG (several images: NAME-<seed>.png)")->capture_default_str();
  cmd->callback([o] {
    set_threads(o->m.threads);
    GenerationParams p = o->p;
    std::tie(p.width, p.height) = parse_image_size(o->size, "--size");
    if (o->seed < 0) p.seed = std::random_device{}() & 0x7fffffff;
    else p.seed = static_cast<uint64_t>(o->seed);
    if (!o->init.empty()) {
      p.init_image = load_image(o->init);
      p.init_image_name = std::filesystem::path(o->init).filename().string();
    }
    p.model_name = std::filesystem::path(o->m.model).filename().string();
    if (!o->image_prompts.empty() && o->m.ip_adapter.empty()) throw ConfigError("--image-prompt needs --ip-adapter");
    if (o->ip_scales.size() > 1 && o->ip_scales.size() != o->image_prompts.size())
      throw ConfigError("--ip-scale: give one scale, or one per --image-prompt");
    for (size_t i = 0; i < o->image_prompts.size(); ++i) {
      const double scale = o->ip_scales.empty() ? 1.0 : o->ip_scales[o->ip_scales.size() == 1 ? 0 : i];
      p.image_prompts.push_back(load_image_prompt(o->image_prompts[i], scale, o->ip_preset));
    }
    if (!o->p.style.empty() && o->m.style_adapter.empty()) throw ConfigError("--style needs --style-adapter");
    if (!o->skeleton.empty()) {
      if (o->m.sk_adapter.empty()) throw ConfigError("--skeleton needs --sk-adapter");
      p.skeleton = world::load_skeleton(o->skeleton);
      p.skeleton_name = std::filesystem::path(o->skeleton).filename().string();
    }
    const auto out_dir = std::filesystem::path(o->out).parent_path();
    if (!out_dir.empty() && !std::filesystem::is_directory(out_dir))
      throw IoError(o->out + ": folder " + out_dir.string() + " does not exist");

    SdModel model = SdModel::load(o->m.model, o->m.load_options());
    model.release_after_use = true;  // one generation per run: free each part once it is done
    p = with_native_size(model, p);  // --size auto: the metadata names the size rendered

    ProgressBar bar;
    GenerationCallbacks cb;
    cb.progress.on_step = [&bar](int s, int t, const std::string& stage) { bar.update(s, t, stage); };
    cb.progress.should_cancel = cancel_on_interrupt();
    cb.warn = [](const std::string& s) { std::fprintf(stderr, "warning: %s\n", s.c_str()); };
    std::vector<GeneratedImage> images = generate(model, p, cb);
    bar.finish();
    for (const GeneratedImage& g : images) {
      const std::string path = output_name(o->out, g.seed, images.size() > 1);
      save_png(path, g.image, generation_metadata(p, g.seed));
      std::printf("%s  seed %llu\n", path.c_str(), static_cast<unsigned long long>(g.seed));
    }
  });
}

void add_random_model_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("random-model",
                                 "Write a tiny Stable Diffusion folder with random weights (for tests and demos)");
  auto dir = std::make_shared<std::string>();
  auto tok = std::make_shared<std::string>();
  auto seed = std::make_shared<uint64_t>(0);
  auto with_ip = std::make_shared<bool>(false);
  cmd->add_flag("--with-ip-adapter", *with_ip, "Also write image_encoder/ and ip-adapter.safetensors");
  cmd->add_option("dir", *dir, "Output folder")->required();
  cmd->add_option("--tokenizer", *tok, "Folder with vocab.json + merges.txt")->required();
  cmd->add_option("--seed", *seed, "Weight seed");
  cmd->callback([dir, tok, seed, with_ip] {
    RandomSdSpec spec = tiny_sd_spec(*tok, *with_ip);
    spec.seed = *seed;
    write_random_sd_pipeline(*dir, spec);
    std::printf("%s: random-weight SD pipeline (noise in, noise out: for testing the machinery)\n", dir->c_str());
  });
}

}  // namespace iris::cli
