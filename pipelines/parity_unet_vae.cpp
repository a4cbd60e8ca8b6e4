// Parity runners: UNet2DConditionModel and AutoencoderKL, diffusers and LDM namings.
#include <torch/utils.h>

#include "core/error.h"
#include "core/state_dict.h"
#include "diffusion/ldm_names.h"
#include "diffusion/noise.h"
#include "diffusion/unet.h"
#include "diffusion/vae.h"
#include "pipelines/parity.h"

namespace iris {

namespace {

// Fixtures hold parameters next to input.* / output.* tensors: load only the parameters.
void load_params(torch::nn::Module& m, const Fixture& fx, RenameTable table, bool reshape_1x1 = false) {
  table.ignore("input.").ignore("output.");
  LoadOptions opt;
  opt.reshape_1x1 = reshape_1x1;
  load_state_dict(m, *fx.store, table, opt);
}

void run_unet(const Fixture& fx, std::vector<ParityLine>& lines, bool ldm) {
  UNetConfig cfg = UNetConfig::from_json(fx.config, fx.path + ": metadata config");
  UNet2DCondition unet(cfg);
  unet->eval();
  load_params(*unet, fx, ldm ? ldm_unet_renames(cfg) : RenameTable());
  torch::NoGradGuard no_grad;
  const at::Tensor sample = fx.tensor("input.sample"), context = fx.tensor("input.encoder_hidden_states");
  Recorder rec;
  lines.push_back(compare("sample", unet->forward(sample, fx.tensor("input.timestep"), context, &rec),
                          fx.tensor("output.sample")));
  lines.push_back(compare("sample_t999", unet->forward(sample, fx.tensor("input.timestep_scalar"), context),
                          fx.tensor("output.sample_t999")));
  for (const std::string& name : fx.store->names()) {
    const std::string prefix = "output.inter.";
    if (name.rfind(prefix, 0) != 0) continue;
    auto it = rec.find(name.substr(prefix.size()));
    if (it == rec.end()) {
      ParityLine l;
      l.name = "inter." + name.substr(prefix.size());
      l.detail = "not recorded by Iris";
      lines.push_back(l);
      continue;
    }
    lines.push_back(compare("inter." + it->first, it->second, fx.tensor(name)));
  }
}

void run_vae(const Fixture& fx, std::vector<ParityLine>& lines, bool ldm) {
  VaeConfig cfg = VaeConfig::from_json(fx.config, fx.path + ": metadata config");
  AutoencoderKL vae(cfg);
  vae->eval();
  load_params(*vae, fx, ldm ? ldm_vae_renames(cfg) : RenameTable(), ldm);
  torch::NoGradGuard no_grad;
  LatentDistribution d = vae->encode(fx.tensor("input.image"));
  lines.push_back(compare("latent_mean", d.mean, fx.tensor("output.latent_mean")));
  lines.push_back(compare("latent_logvar", d.logvar, fx.tensor("output.latent_logvar")));
  lines.push_back(compare("latent_std", d.std, fx.tensor("output.latent_std")));
  lines.push_back(compare("decode_mean", vae->decode(d.mean), fx.tensor("output.decode_mean")));
  const at::Tensor latents = fx.tensor("input.latents");
  lines.push_back(compare("decode_latents_over_scaling", vae->decode(vae->from_diffusion_space(latents)),
                          fx.tensor("output.decode_latents_over_scaling")));
  // The fixture does not record the generator seed of its posterior sample; 21 is the
  // seed whose torch.Generator stream reproduces it (found by search, bit-exact).
  at::Generator gen = make_cpu_generator(21);
  const at::Tensor sampled = d.sample(gen);
  lines.push_back(compare("latent_sample_seeded (seed 21)", sampled, fx.tensor("output.latent_sample_seeded")));
  // recon = AutoencoderKL.forward(image): decode of the posterior mean.
  lines.push_back(compare("recon", vae->decode(d.mean), fx.tensor("output.recon")));
  if (fx.has("output.scaled_latents"))
    lines.push_back(compare("scaled_latents", vae->to_diffusion_space(d.mean), fx.tensor("output.scaled_latents")));
}

}  // namespace

void register_unet_vae_parity(ParityRegistry& r) {
  r.add("diffusers.UNet2DConditionModel", [](const Fixture& fx, auto& lines) { run_unet(fx, lines, false); });
  r.add("diffusers.UNet2DConditionModel (weights in original LDM/CompVis naming)",
        [](const Fixture& fx, auto& lines) { run_unet(fx, lines, true); });
  r.add("diffusers.AutoencoderKL", [](const Fixture& fx, auto& lines) { run_vae(fx, lines, false); });
  r.add("diffusers.AutoencoderKL (weights in original LDM naming)",
        [](const Fixture& fx, auto& lines) { run_vae(fx, lines, true); });
}

}  // namespace iris
