// Parity runner for diffusers.StableDiffusionPipeline: prompt encoding, the guided
// denoising loop (DDIM and Euler, 3 steps, guidance 7.5), VAE decode and post-processing.
// Runs with the IP-Adapter (base, image prompt through the CLIP image encoder) and without
// (".noip").
#include <torch/utils.h>

#include "adapters/ip_adapter.h"
#include "core/error.h"
#include "core/image.h"

#include <cstring>
#include "core/state_dict.h"
#include "diffusion/schedulers/factory.h"
#include "pipelines/parity.h"
#include "pipelines/stable_diffusion.h"

namespace iris {

namespace {

void load_component(torch::nn::Module& m, const Fixture& fx, const std::string& prefix) {
  RenameTable t;
  // IP-Adapter weights sit inside the UNet's names; the plain pipeline ignores them.
  t.ignore("encoder_hid_proj.");
  LoadOptions opt;
  opt.source_prefix = prefix;
  opt.allow_missing = nullptr;
  // Drop the attention-processor IP weights (".processor.to_k_ip.0.weight" ...).
  std::map<std::string, at::Tensor> params;
  for (const std::string& name : fx.store->names())
    if (name.rfind(prefix, 0) == 0 && name.find(".processor.") == std::string::npos) params[name] = fx.tensor(name);
  load_state_dict(m, params, t, opt, fx.path + " [" + prefix + "]");
}

void run_sd_pipeline(const Fixture& fx, std::vector<ParityLine>& lines) {
  torch::NoGradGuard no_grad;
  const std::string what = fx.path + ": config";
  ClipTextModel text(ClipTextConfig::from_json(fx.config.at("text_encoder"), what + ".text_encoder"), false);
  load_component(*text, fx, "text_encoder.");
  UNet2DCondition unet(UNetConfig::from_json(fx.config.at("unet"), what + ".unet"));
  load_component(*unet, fx, "unet.");
  AutoencoderKL vae(VaeConfig::from_json(fx.config.at("vae"), what + ".vae"));
  load_component(*vae, fx, "vae.");
  text->eval();
  unet->eval();
  vae->eval();

  const at::Tensor cond = encode_ids(text, fx.tensor("input.input_ids"));
  const at::Tensor uncond = encode_ids(text, fx.tensor("input.negative_input_ids"));
  lines.push_back(compare("prompt_embeds", cond, fx.tensor("output.prompt_embeds")));
  lines.push_back(compare("negative_prompt_embeds", uncond, fx.tensor("output.negative_prompt_embeds")));
  const double guidance = std::stod(fx.store->metadata().at("guidance_scale"));
  const int64_t steps = std::stoll(fx.store->metadata().at("num_inference_steps"));

  // The image prompt: CLIP preprocessing, the image encoder's image_embeds, and the
  // IP-Adapter tokens (negative: projection of zero embeds, as diffusers' encode_image).
  ClipVisionModel image_encoder(ClipVisionConfig::from_json(fx.config.at("image_encoder"), what + ".image_encoder"), true);
  load_component(*image_encoder, fx, "image_encoder.");
  image_encoder->eval();
  const at::Tensor hwc = fx.tensor("input.ip_image_hwc_uint8").to(at::kByte).contiguous();
  Image ip_image(static_cast<int>(hwc.size(1)), static_cast<int>(hwc.size(0)), 3);
  std::memcpy(ip_image.pixels.data(), hwc.data_ptr<uint8_t>(), ip_image.pixels.size());
  int ph = 0, pw = 0;
  std::vector<float> chw = clip_preprocess(ip_image, ClipPreprocessConfig::from_json(fx.config.at("feature_extractor")), &ph, &pw);
  const at::Tensor pixels = at::from_blob(chw.data(), {1, 3, ph, pw}, at::kFloat).clone();
  lines.push_back(compare("ip_pixel_values", pixels, fx.tensor("output.ip_pixel_values")));
  const at::Tensor embeds = image_encoder->forward(pixels).image_embeds;  // [1, D]
  lines.push_back(compare("ip_image_embeds", embeds, fx.tensor("output.ip_image_embeds")));
  std::map<std::string, at::Tensor> all;
  for (const std::string& n : fx.store->names())
    if (n.rfind("unet.", 0) == 0 || n.rfind("ipa_orig.", 0) == 0) all[n] = fx.tensor(n);
  IpAdapter ip = load_ip_adapter(all, unet, "unet.", fx.path + " [unet IP-Adapter]");
  const at::Tensor ip_tokens = ip->image_tokens(at::cat({at::zeros_like(embeds), embeds}, 0));  // [uncond; cond]

  for (const std::string variant : {"ddim", "euler", "ddim.noip", "euler.noip"}) {
    const std::string sampler = variant.substr(0, variant.find('.'));
    const bool with_ip = variant.find("noip") == std::string::npos;
    if (with_ip) attach_ip_adapter(ip, unet, ip_tokens, 1.0);
    else detach_streams(unet, "ip_adapter");
    const std::string out = "output." + variant + ".";
    auto scheduler = make_scheduler(sampler, sd15_scheduler_config());
    scheduler->set_timesteps(steps);
    if (!with_ip)
      lines.push_back(compare(sampler + ".timesteps", scheduler->timesteps().to(at::kLong),
                              fx.tensor("output." + sampler + ".timesteps").to(at::kLong)));
    at::Tensor x = initial_latents(*scheduler, fx.tensor("input.latents"));
    std::vector<at::Tensor> per_step;
    PreviewFn keep = [&](const StepPreview& s) { per_step.push_back(s.x.clone()); };
    x = sample(*scheduler, guided_denoiser(unet, cond, uncond, guidance), x, NoiseSource(), Progress(), keep);
    for (size_t i = 0; i < per_step.size(); ++i)
      lines.push_back(compare(variant + ".latents_step" + std::to_string(i), per_step[i],
                              fx.tensor(out + "latents_step" + std::to_string(i)), 1e-3));
    lines.push_back(compare(variant + ".final_latents", x, fx.tensor(out + "final_latents"), 1e-3));
    const at::Tensor decoded = decode_latents(vae, x);
    lines.push_back(compare(variant + ".decoded_raw", decoded, fx.tensor(out + "decoded_raw"), 1e-3));
    lines.push_back(compare(variant + ".image", (decoded / 2 + 0.5).clamp(0, 1), fx.tensor(out + "image"), 1e-3));
  }
}

}  // namespace

void register_pipeline_parity(ParityRegistry& r) { r.add("diffusers.StableDiffusionPipeline", run_sd_pipeline); }

}  // namespace iris
