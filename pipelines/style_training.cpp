#include "pipelines/style_training.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include <torch/utils.h>

#include "adapters/style_adapter.h"
#include "core/error.h"
#include "core/image.h"
#include "diffusion/noise.h"
#include "diffusion/schedulers/schedule.h"
#include "pipelines/sd_model.h"
#include "pipelines/stable_diffusion.h"
#include "pipelines/trainer.h"

namespace fs = std::filesystem;

namespace iris {

namespace {

bool valid_name(const std::string& n) {
  if (n.empty() || n.size() > 64) return false;
  return std::all_of(n.begin(), n.end(), [](unsigned char c) { return std::isalnum(c) || c == '_' || c == '-'; });
}

std::vector<fs::path> image_files(const std::string& folder, int most) {
  std::error_code ec;
  if (!fs::is_directory(folder, ec)) throw IoError(folder + ": no such folder of style images");
  std::vector<fs::path> out;
  for (const auto& e : fs::directory_iterator(folder, ec)) {
    std::string ext = e.path().extension().string();
    std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
    if (e.is_regular_file() && (ext == ".png" || ext == ".jpg" || ext == ".jpeg" || ext == ".bmp"))
      out.push_back(e.path());
  }
  std::sort(out.begin(), out.end());  // deterministic order
  if (out.empty()) throw ConfigError(folder + ": no images (.png, .jpg, .jpeg, .bmp) to learn a style from");
  if (most > 0 && static_cast<int>(out.size()) > most) out.resize(most);
  return out;
}

std::string sidecar_caption(const fs::path& image, const std::string& fallback) {
  fs::path txt = image;
  txt.replace_extension(".txt");
  std::ifstream f(txt);
  if (!f) return fallback;
  std::stringstream ss;
  ss << f.rdbuf();
  std::string s = ss.str();
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.pop_back();
  return s;
}

}  // namespace

void NewStyleOptions::validate() const {
  auto bad = [](const std::string& m) { throw ConfigError("new style: " + m); };
  if (model.empty()) bad("--model is required");
  if (adapter.empty()) bad("--adapter (a style-adapter.safetensors) is required");
  if (images.empty()) bad("--images (a folder of images in the style) is required");
  if (!valid_name(name)) bad("--name \"" + name + "\": use 1-64 letters, digits, '_' or '-'");
  if (steps < 1 || steps > 1000000) bad("--steps " + std::to_string(steps) + ": must be in 1..1000000");
  if (batch < 1 || batch > 256) bad("--batch " + std::to_string(batch) + ": must be in 1..256");
  if (!(lr > 0) || !std::isfinite(lr)) bad("--lr must be a positive number");
  if (!(drop_text >= 0 && drop_text <= 1)) bad("--drop-text must be in [0, 1]");
  if (resolution < 0 || resolution > 4096 || resolution % 8 != 0)
    bad("--resolution " + std::to_string(resolution) + ": a multiple of 8 up to 4096 (0: the model's)");
  if (max_images < 0) bad("--max-images must be >= 0");
}

std::string NewStyleOptions::output_path() const {
  if (!out.empty()) return out;
  return (fs::path(adapter).parent_path() / "styles" / (name + ".safetensors")).string();
}

NewStyleResult train_new_style(const NewStyleOptions& o, const NewStyleCallbacks& cb) {
  o.validate();
  auto note = [&](const std::string& s) {
    if (cb.log) cb.log(s);
    else std::printf("%s\n", s.c_str());
  };
  const std::vector<fs::path> files = image_files(o.images, o.max_images);  // before any weight is read
  const std::string out_path = o.output_path();
  {
    const fs::path dir = fs::path(out_path).parent_path();
    std::error_code ec;
    if (!dir.empty()) fs::create_directories(dir, ec);
    if (ec) throw IoError(out_path + ": cannot create " + dir.string() + ": " + ec.message());
  }

  SdLoadOptions lo;
  lo.device = o.device;
  lo.style_adapter = o.adapter;
  SdModel model = SdModel::load(o.model, lo);
  StyleAdapter adapter = model.style_adapter;
  if (adapter->find_style(o.name) >= 0)
    throw ConfigError("new style: \"" + o.name + "\" is already in " + o.adapter + "'s bank; choose another --name");
  for (torch::nn::Module* m : {static_cast<torch::nn::Module*>(model.unet.get()), static_cast<torch::nn::Module*>(model.vae.get()),
                               static_cast<torch::nn::Module*>(model.text_encoder.get()), static_cast<torch::nn::Module*>(adapter.get())})
    for (auto& p : m->parameters()) p.set_requires_grad(false);
  const ScheduleConfig sc = parse_schedule_config(model.scheduler_config, SchedulerKind::DDIM);
  const at::Tensor schedule = make_noise_schedule(sc).alphas_cumprod;
  const int side = o.resolution > 0 ? o.resolution : static_cast<int>(model.vae->config().sample_size);

  // Latents and caption embeddings, once.
  std::vector<at::Tensor> latents, texts;
  auto encode_text = [&](const std::string& text) {
    return encode_prompt(model, text, [&](const std::string& w) { note("warning: " + w); });
  };
  {
    torch::NoGradGuard no_grad;
    for (const fs::path& f : files) {
      Image img = to_rgb(load_image(f.string()));
      if (img.width != side || img.height != side) {
        const int s = std::min(img.width, img.height);
        img = resize_bicubic(center_crop(img, s, s), side, side);
      }
      latents.push_back(model.vae->to_diffusion_space(model.vae->encode(image_to_tensor(img).to(model.device)).mean)[0]);
      texts.push_back(encode_text(sidecar_caption(f, o.caption)));
    }
  }
  at::Tensor empty_text;
  {
    torch::NoGradGuard no_grad;
    empty_text = encode_text("");
  }
  note(std::to_string(files.size()) + " images of the new style \"" + o.name + "\" at " + std::to_string(side) + "x" +
       std::to_string(side));

  // The one trainable tensor: the style's embedding [K, E], started at the bank's mean.
  at::Tensor embedding = adapter->bank.detach().mean(0).clone().set_requires_grad(true);
  TrainerOptions to;
  to.name = "style " + o.name;
  to.steps = o.steps;
  to.lr = o.lr;
  to.cosine = false;
  to.weight_decay = 0;
  to.seed = o.seed;
  to.log_every = 0;
  Trainer trainer({{"style.embedding", embedding}}, to);

  NewStyleResult r;
  r.images = static_cast<int>(files.size());
  const int64_t T = schedule.size(0);
  const auto N = static_cast<uint64_t>(latents.size());
  UNet2DCondition& unet = model.unet;
  while (!trainer.done()) {
    if (cb.should_cancel && cb.should_cancel()) {
      r.cancelled = true;
      break;
    }
    const int64_t step = trainer.current_step();
    std::mt19937_64 rng(trainer_step_seed(o.seed, step) ^ 0x57f1eull);
    std::vector<at::Tensor> x0, ctx;
    std::vector<int64_t> ts;
    for (int b = 0; b < o.batch; ++b) {
      const uint64_t i = rng() % N;
      x0.push_back(latents[i]);
      ts.push_back(static_cast<int64_t>(rng() % static_cast<uint64_t>(T)));
      ctx.push_back(std::uniform_real_distribution<double>(0, 1)(rng) < o.drop_text ? empty_text : texts[i]);
    }
    at::Generator gen = make_cpu_generator(trainer_step_seed(o.seed, step));
    const at::Tensor x = at::stack(x0);                                            // [B, 4, h, w]
    const at::Tensor noise = seeded_randn(x.sizes(), gen, model.device);
    const at::Tensor acp = schedule.index_select(0, at::tensor(ts, at::kLong)).to(model.device).view({o.batch, 1, 1, 1});
    const at::Tensor noisy = acp.sqrt() * x + (1 - acp).sqrt() * noise;
    const at::Tensor tokens = adapter->style_tokens(embedding.unsqueeze(0).expand({o.batch, -1, -1}));  // [B, K, C]
    attach_style(adapter, unet, tokens, 1.0, std::vector<bool>(o.batch, true));
    at::Tensor loss;
    try {
      const at::Tensor pred = unet->forward(noisy, at::tensor(ts, at::kLong).to(model.device), at::stack(ctx));
      loss = at::mse_loss(pred, prediction_target(sc.prediction_type, x, noise, acp));
    } catch (...) {
      detach_style(unet);
      throw;
    }
    const double value = trainer.step(loss);
    detach_style(unet);
    r.losses.push_back(value);
    if (cb.on_step) cb.on_step(static_cast<int>(step + 1), o.steps, value);
  }

  StyleFile style;
  style.name = o.name;
  style.embedding = embedding.detach().clone();
  style.description = o.description.empty() ? "learned from " + std::to_string(files.size()) + " images in " + o.images
                                            : o.description;
  save_style(out_path, style);
  r.path = out_path;
  note("style \"" + o.name + "\" written to " + out_path + (r.cancelled ? " (stopped early)" : ""));
  return r;
}

}  // namespace iris
