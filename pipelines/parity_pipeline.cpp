// Parity runner for diffusers.StableDiffusionPipeline: prompt encoding, the guided
// denoising loop (DDIM and Euler, 3 steps, guidance 7.5), VAE decode and post-processing.
// The IP-Adapter variants of the fixture belong to the adapters; here the ".noip" runs.
#include <torch/utils.h>

#include "core/error.h"
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

  for (const std::string sampler : {"ddim", "euler"}) {
    const std::string out = "output." + sampler + ".noip.";
    auto scheduler = make_scheduler(sampler, sd15_scheduler_config());
    scheduler->set_timesteps(steps);
    lines.push_back(compare(sampler + ".timesteps", scheduler->timesteps().to(at::kLong),
                            fx.tensor("output." + sampler + ".timesteps").to(at::kLong)));
    at::Tensor x = initial_latents(*scheduler, fx.tensor("input.latents"));
    std::vector<at::Tensor> per_step;
    PreviewFn keep = [&](const StepPreview& s) { per_step.push_back(s.x.clone()); };
    x = sample(*scheduler, guided_denoiser(unet, cond, uncond, guidance), x, NoiseSource(), Progress(), keep);
    for (size_t i = 0; i < per_step.size(); ++i)
      lines.push_back(compare(sampler + ".noip.latents_step" + std::to_string(i), per_step[i],
                              fx.tensor(out + "latents_step" + std::to_string(i)), 1e-3));
    lines.push_back(compare(sampler + ".noip.final_latents", x, fx.tensor(out + "final_latents"), 1e-3));
    const at::Tensor decoded = decode_latents(vae, x);
    lines.push_back(compare(sampler + ".noip.decoded_raw", decoded, fx.tensor(out + "decoded_raw"), 1e-3));
    lines.push_back(compare(sampler + ".noip.image", (decoded / 2 + 0.5).clamp(0, 1), fx.tensor(out + "image"), 1e-3));
  }
}

}  // namespace

void register_pipeline_parity(ParityRegistry& r) { r.add("diffusers.StableDiffusionPipeline", run_sd_pipeline); }

}  // namespace iris
