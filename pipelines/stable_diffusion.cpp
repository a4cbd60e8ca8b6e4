#include "pipelines/stable_diffusion.h"

#include <cmath>
#include <filesystem>
#include <sstream>

#include <torch/utils.h>

#include "adapters/adapter_streams.h"
#include "core/error.h"
#include "core/runtime_env.h"
#include "diffusion/noise.h"
#include "diffusion/schedulers/factory.h"

namespace iris {

void GenerationParams::validate(int64_t scale) const {
  auto bad = [](const std::string& m) { throw ConfigError(m); };
  if (width <= 0 || height <= 0 || width > 4096 || height > 4096)
    bad("size " + std::to_string(width) + "x" + std::to_string(height) + " is out of range (1..4096)");
  if (width % scale || height % scale)
    bad("size " + std::to_string(width) + "x" + std::to_string(height) + " must be a multiple of " +
        std::to_string(scale) + " (the VAE's downsampling factor)");
  if (steps < 1 || steps > 1000) bad("steps " + std::to_string(steps) + " must be in 1..1000");
  if (!std::isfinite(cfg_scale) || cfg_scale < 0 || cfg_scale > 100) bad("cfg scale must be in 0..100");
  if (batch < 1 || batch > 64) bad("batch " + std::to_string(batch) + " must be in 1..64");
  if (init_image && (!(strength > 0) || strength > 1)) bad("strength must be in (0, 1]");
  if (!std::isfinite(style_strength) || std::abs(style_strength) > 100) bad("style strength must be in -100..100");
  if (!std::isfinite(skeleton_scale) || std::abs(skeleton_scale) > 100) bad("skeleton scale must be in -100..100");
  if (!std::isfinite(skeleton_camera_distance) || skeleton_camera_distance < 0)
    bad("skeleton camera distance must be >= 0 (0: the file's camera)");
}

int native_image_size(const SdModel& model) {
  return static_cast<int>(model.unet->config().sample_size * model.vae->config().scale());
}

GenerationParams with_native_size(const SdModel& model, GenerationParams p) {
  if (p.width == 0 || p.height == 0) {
    if (!model.unet || !model.vae) throw ConfigError("size 0 (the model's native size) needs a model with its UNet and VAE");
    const int side = native_image_size(model);
    if (p.width == 0) p.width = side;
    if (p.height == 0) p.height = side;
  }
  return p;
}

ImagePrompt load_image_prompt(const std::string& path, double scale, const std::string& preset) {
  ImagePrompt ip;
  ip.image = load_image(path);
  ip.name = std::filesystem::path(path).filename().string();
  ip.scale = scale;
  ip.preset = preset;
  return ip;
}

std::vector<int> prompt_ids(const SdModel& model, const std::string& prompt,
                            const std::function<void(const std::string&)>& warn) {
  const int max_len = static_cast<int>(model.text_encoder->config().max_position_embeddings);
  std::vector<int> ids = model.tokenizer->encode(prompt);
  if (static_cast<int>(ids.size()) > max_len - 2) {
    // As diffusers does: keep the first max_len - 2 tokens and say what was dropped.
    std::vector<int> dropped(ids.begin() + (max_len - 2), ids.end());
    if (warn)
      warn("prompt is " + std::to_string(ids.size()) + " tokens; the text encoder reads " +
           std::to_string(max_len - 2) + ", so this part was cut: \"" + model.tokenizer->decode(dropped) + "\"");
  }
  return model.tokenizer->encode_padded(prompt, max_len, static_cast<int>(model.pad_token_id));
}

at::Tensor encode_prompt(SdModel& model, const std::string& prompt, const std::function<void(const std::string&)>& warn) {
  const std::vector<int> ids = prompt_ids(model, prompt, warn);
  return encode_ids(model.text_encoder,
                    at::tensor(std::vector<int64_t>(ids.begin(), ids.end()), at::kLong).unsqueeze(0).to(model.device))[0];
}

at::Tensor encode_ids(ClipTextModel& text_encoder, const at::Tensor& ids) {
  torch::NoGradGuard no_grad;
  return text_encoder->forward(ids).last_hidden_state;
}

Denoiser guided_denoiser(UNet2DCondition& unet, const at::Tensor& cond, const at::Tensor& uncond, double cfg_scale) {
  const bool guided = cfg_scale > 1.0 && uncond.defined();
  // Both halves in one UNet call: [uncond; cond] along the batch.
  at::Tensor context = guided ? at::cat({uncond, cond}, 0) : cond;
  return [unet, context, guided, cfg_scale](const at::Tensor& x_in, const at::Tensor& t, int64_t) mutable {
    torch::NoGradGuard no_grad;
    if (!guided) return unet->forward(x_in, t, context);
    at::Tensor out = unet->forward(at::cat({x_in, x_in}, 0), t, context);
    auto halves = out.chunk(2, 0);
    return halves[0] + cfg_scale * (halves[1] - halves[0]);
  };
}

at::Tensor decode_latents(AutoencoderKL& vae, const at::Tensor& latents) {
  torch::NoGradGuard no_grad;
  // One image at a time: the decoder's full-resolution activations (a [1, 128, 512, 512] map is
  // 128 MB, several live at once) then exist for one image, not the batch, and image i decodes
  // the same whatever the batch size.
  std::vector<at::Tensor> images;
  for (int64_t b = 0; b < latents.size(0); ++b)
    images.push_back(vae->decode(vae->from_diffusion_space(latents.narrow(0, b, 1))));
  return images.size() == 1 ? images[0] : at::cat(images, 0);
}

std::vector<Image> to_images(const at::Tensor& decoded) {
  // [B, 3, H, W] -> [B, H, W, 3] uint8
  at::Tensor u8 = (decoded.detach().to(at::kCPU, at::kFloat) / 2 + 0.5)
                      .clamp(0, 1)
                      .mul(255)
                      .round()
                      .to(at::kByte)
                      .permute({0, 2, 3, 1})
                      .contiguous();
  std::vector<Image> out;
  for (int64_t b = 0; b < u8.size(0); ++b) {
    Image img(static_cast<int>(u8.size(2)), static_cast<int>(u8.size(1)), 3);
    std::memcpy(img.pixels.data(), u8[b].data_ptr<uint8_t>(), img.pixels.size());
    out.push_back(std::move(img));
  }
  return out;
}

at::Tensor image_to_tensor(const Image& image) {
  Image rgb = image.channels == 3 ? image : to_rgb(image);
  at::Tensor t = at::from_blob(rgb.pixels.data(), {1, rgb.height, rgb.width, 3}, at::kByte).clone();
  return t.permute({0, 3, 1, 2}).to(at::kFloat).div(127.5).sub(1.0).contiguous();
}

BatchNoise::BatchNoise(uint64_t seed, int batch) {
  for (int i = 0; i < batch; ++i) gens_.push_back(make_cpu_generator(seed + static_cast<uint64_t>(i)));
}

at::Tensor BatchNoise::operator()(const at::Tensor& like) {
  if (like.size(0) != static_cast<int64_t>(gens_.size()))
    throw ShapeError("batch noise: " + std::to_string(like.size(0)) + " rows for " + std::to_string(gens_.size()) +
                     " generators");
  std::vector<at::Tensor> rows;
  auto shape = like.sizes().vec();
  shape[0] = 1;
  for (auto& g : gens_) rows.push_back(at::randn(shape, g, at::TensorOptions().dtype(at::kFloat)));
  at::Tensor out = at::cat(rows, 0);
  return like.device().is_cpu() ? out : out.to(like.device());
}

NoiseSource BatchNoise::source() {
  return [this](const at::Tensor& like) { return (*this)(like); };
}

std::vector<GeneratedImage> generate(SdModel& model, const GenerationParams& params, const GenerationCallbacks& cb) {
  if (!model.text_encoder || !model.unet || !model.vae)
    throw ConfigError(model.source + ": this model's parts were released after a previous generation "
                      "(release_after_use); load it again");
  const GenerationParams p = with_native_size(model, params);
  const int64_t scale = model.vae->config().scale();
  p.validate(scale);
  torch::NoGradGuard no_grad;
  const int B = p.batch;
  // Text: [B, 77, D] for the prompt and (with guidance) the negative prompt.
  auto ids_tensor = [&](const std::string& text) {
    std::vector<int> ids = prompt_ids(model, text, cb.warn);
    return at::tensor(std::vector<int64_t>(ids.begin(), ids.end()), at::kLong).unsqueeze(0).to(model.device);
  };
  at::Tensor cond = encode_ids(model.text_encoder, ids_tensor(p.prompt)).expand({B, -1, -1});
  at::Tensor uncond;
  if (p.cfg_scale > 1.0) uncond = encode_ids(model.text_encoder, ids_tensor(p.negative_prompt)).expand({B, -1, -1});

  SchedulerOptions so;
  so.karras = p.karras;
  so.eta = p.eta;
  auto scheduler = make_scheduler(p.sampler, model.scheduler_config, so);
  BatchNoise noise(p.seed, B);
  const int64_t C = model.unet->config().in_channels;
  const at::Tensor shape_like = at::empty({B, C, p.height / scale, p.width / scale});
  at::Tensor x;
  if (p.init_image) {
    Image init = *p.init_image;
    if (init.width != p.width || init.height != p.height) init = resize_bicubic(to_rgb(init), p.width, p.height);
    at::Tensor pixels = image_to_tensor(init).to(model.device).expand({B, -1, -1, -1});
    LatentDistribution d = model.vae->encode(pixels);
    at::Tensor x0 = model.vae->to_diffusion_space(d.mean + d.std * noise(d.mean));
    set_img2img_timesteps(*scheduler, p.steps, p.strength);
    x = img2img_latents(*scheduler, x0, noise(x0));
  } else {
    scheduler->set_timesteps(p.steps);
    x = initial_latents(*scheduler, noise(shape_like).to(model.device));
  }
  // Image prompts: one stream per reference image on every attn2 layer, removed afterwards
  // (also when cancelled) so the model stays as loaded.
  struct Detach {
    SdModel& m;
    size_t n;
    void release_unet() {
      m.unet = nullptr;
      m.ip_adapter = nullptr;
      n = 0;
    }
    ~Detach() {
      for (size_t i = 0; i < n; ++i) detach_streams(m.unet, "ip_adapter." + std::to_string(i));
      if (m.unet) {  // null once released (release_after_use)
        detach_style(m.unet);
        detach_skeleton(m.unet);
      }
    }
  } detach{model, p.image_prompts.size()};
  if (!p.image_prompts.empty() && !model.ip_adapter)
    throw ConfigError("image prompts need a model loaded with an IP-Adapter");
  for (size_t i = 0; i < p.image_prompts.size(); ++i) {
    const ImagePrompt& ip = p.image_prompts[i];
    at::Tensor tokens = image_prompt_tokens(model, ip.image, B, uncond.defined());
    attach_ip_adapter(model.ip_adapter, model.unet, tokens, ip.scale,
                      ip_layer_scales(ip.preset, ip.scale, model.unet), {}, "ip_adapter." + std::to_string(i));
  }
  if (model.release_after_use) {  // the prompts and image prompts are encoded: free the encoders
    model.text_encoder = nullptr;
    model.image_encoder = nullptr;
    release_free_memory();
  }
  attach_style_and_skeleton(model, p, B, uncond.defined(), cb.warn);
  Denoiser denoise = guided_denoiser(model.unet, cond, uncond, p.cfg_scale);
  x = sample(*scheduler, denoise, x, noise.source(), cb.progress, cb.preview);
  cb.progress.check_cancel();
  if (model.release_after_use) {  // only the VAE is needed from here
    denoise = nullptr;
    detach.release_unet();
    release_free_memory();
  }
  std::vector<Image> images = to_images(decode_latents(model.vae, x));
  std::vector<GeneratedImage> out;
  for (int i = 0; i < B; ++i) out.push_back({std::move(images[i]), p.seed + static_cast<uint64_t>(i)});
  return out;
}

void attach_style_and_skeleton(SdModel& model, const GenerationParams& p, int batch, bool guided,
                               const std::function<void(const std::string&)>& warn) {
  torch::NoGradGuard no_grad;
  const int64_t rows = guided ? 2 * batch : batch;
  if (!p.style.empty()) {
    if (!model.style_adapter) throw ConfigError("style \"" + p.style + "\" needs a model loaded with a style adapter");
    const StyleFile style = resolve_style(model.style_adapter, p.style, model.style_adapter_path);
    const at::Tensor tokens = model.style_adapter->style_tokens(style.embedding.unsqueeze(0).to(model.device));
    attach_style(model.style_adapter, model.unet, tokens.expand({rows, -1, -1}), p.style_strength,
                 cfg_rows(batch, guided));
  }
  if (p.skeleton) {
    if (!model.sk_adapter) throw ConfigError("a skeleton needs a model loaded with a skeleton adapter (SK-Adapter)");
    world::Camera camera;
    camera.distance = p.skeleton_camera_distance;
    const world::Skeleton flat = skeleton_in_2d(*p.skeleton, p.skeleton_camera_distance > 0 ? &camera : nullptr, warn);
    const SkeletonInputs in = skeleton_inputs({flat}, model.sk_adapter->config()).to(model.device);
    const at::Tensor tokens = model.sk_adapter->encoder->forward(in);  // [1, J, C]
    attach_skeleton(model.sk_adapter, model.unet, tokens.expand({rows, -1, -1}), in.valid.expand({rows, -1}),
                    p.skeleton_scale, cfg_rows(batch, guided));
  }
}

at::Tensor image_prompt_tokens(SdModel& model, const Image& image, int batch, bool guided) {
  torch::NoGradGuard no_grad;
  int h = 0, w = 0;
  std::vector<float> chw = clip_preprocess(to_rgb(image), model.image_preprocess, &h, &w);
  const at::Tensor pixels = at::from_blob(chw.data(), {1, 3, h, w}, at::kFloat).clone().to(model.device);
  at::Tensor cond, uncond;
  if (model.ip_adapter->config().variant == IpVariant::Base) {
    const at::Tensor embeds = model.image_encoder->forward(pixels).image_embeds;  // [1, D]
    cond = model.ip_adapter->image_tokens(embeds);
    if (guided) uncond = model.ip_adapter->image_tokens(at::zeros_like(embeds));
  } else {
    cond = model.ip_adapter->image_tokens(model.image_encoder->hidden_state(pixels, -2));
    if (guided) uncond = model.ip_adapter->image_tokens(model.image_encoder->hidden_state(at::zeros_like(pixels), -2));
  }
  cond = cond.expand({batch, -1, -1});
  return guided ? at::cat({uncond.expand({batch, -1, -1}), cond}, 0) : cond;
}

std::string sampler_display_name(const std::string& sampler, bool karras) {
  std::string n = sampler == "euler_a" ? "Euler a" : sampler == "euler" ? "Euler" : sampler == "ddim" ? "DDIM"
                : sampler == "dpmpp_2m" ? "DPM++ 2M" : sampler == "lcm" ? "LCM" : sampler;
  return karras ? n + " Karras" : n;
}

PngText generation_metadata(const GenerationParams& p, uint64_t seed) {
  std::ostringstream s;
  s << p.prompt << "\n";
  if (!p.negative_prompt.empty()) s << "Negative prompt: " << p.negative_prompt << "\n";
  s << "Steps: " << p.steps << ", Sampler: " << sampler_display_name(p.sampler, p.karras) << ", CFG scale: " << p.cfg_scale
    << ", Seed: " << seed << ", Size: " << p.width << "x" << p.height;
  if (!p.model_name.empty()) s << ", Model: " << p.model_name;
  if (p.init_image) s << ", Denoising strength: " << p.strength;
  if (p.sampler == "ddim" && p.eta != 0) s << ", Eta: " << p.eta;
  Json j = {{"prompt", p.prompt}, {"negative_prompt", p.negative_prompt}, {"sampler", p.sampler},
            {"karras", p.karras}, {"eta", p.eta}, {"steps", p.steps}, {"cfg_scale", p.cfg_scale},
            {"seed", seed}, {"width", p.width}, {"height", p.height}, {"model", p.model_name},
            {"generator", "iris"}};
  if (!p.image_prompts.empty()) {
    Json prompts = Json::array();
    for (const ImagePrompt& ip : p.image_prompts)
      prompts.push_back({{"image", ip.name}, {"scale", ip.scale}, {"preset", ip.preset}});
    j["image_prompts"] = prompts;
    s << ", IP-Adapter: " << p.image_prompts.size() << " image(s)";
  }
  if (!p.style.empty()) {
    j["style"] = p.style;
    j["style_strength"] = p.style_strength;
    s << ", Style: " << p.style << " (" << p.style_strength << ")";
  }
  if (p.skeleton) {
    j["skeleton"] = world::skeleton_to_json(*p.skeleton);  // the whole skeleton: renderable again
    j["skeleton_name"] = p.skeleton_name;
    j["skeleton_scale"] = p.skeleton_scale;
    if (p.skeleton_camera_distance > 0) j["skeleton_camera_distance"] = p.skeleton_camera_distance;
    s << ", Skeleton: " << (p.skeleton_name.empty() ? "yes" : p.skeleton_name) << " (" << p.skeleton_scale << ")";
  }
  if (p.init_image) {
    j["init_image"] = p.init_image_name;
    j["strength"] = p.strength;
  }
  return {{"parameters", s.str()}, {"iris", j.dump()}};
}

GenerationParams params_from_metadata(const PngText& text, const std::string& what) {
  for (const auto& [k, v] : text) {
    if (k != "iris") continue;
    Json j = parse_json(v, what + ": \"iris\" metadata");
    GenerationParams p;
    p.prompt = json_string(j, "prompt", "", what);
    p.negative_prompt = json_string(j, "negative_prompt", "", what);
    p.sampler = json_string(j, "sampler", p.sampler, what);
    p.karras = json_bool(j, "karras", false, what);
    p.eta = json_number(j, "eta", 0.0, what);
    p.steps = static_cast<int>(json_int(j, "steps", p.steps, what));
    p.cfg_scale = json_number(j, "cfg_scale", p.cfg_scale, what);
    p.seed = static_cast<uint64_t>(json_int(j, "seed", 0, what));
    p.width = static_cast<int>(json_int(j, "width", p.width, what));
    p.height = static_cast<int>(json_int(j, "height", p.height, what));
    p.model_name = json_string(j, "model", "", what);
    p.init_image_name = json_string(j, "init_image", "", what);
    p.strength = json_number(j, "strength", p.strength, what);
    p.style = json_string(j, "style", "", what);
    p.style_strength = json_number(j, "style_strength", p.style_strength, what);
    if (j.contains("skeleton")) p.skeleton = world::parse_skeleton(j["skeleton"], what + ": skeleton");
    p.skeleton_name = json_string(j, "skeleton_name", "", what);
    p.skeleton_scale = json_number(j, "skeleton_scale", p.skeleton_scale, what);
    p.skeleton_camera_distance = json_number(j, "skeleton_camera_distance", 0.0, what);
    return p;
  }
  throw FormatError(what + ": no Iris generation parameters in this PNG");
}

}  // namespace iris
