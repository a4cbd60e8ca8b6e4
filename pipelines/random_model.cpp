#include "pipelines/random_model.h"

#include <filesystem>
#include <fstream>

#include <torch/nn/module.h>
#include <torch/utils.h>

#include "core/error.h"
#include "core/tensor_io.h"
#include "diffusion/clip.h"
#include "diffusion/unet.h"
#include "diffusion/vae.h"
#include "pipelines/sd_model.h"
#include "adapters/ip_adapter.h"

namespace fs = std::filesystem;

namespace iris {

RandomSdSpec tiny_sd_spec(const std::string& tokenizer_dir, bool with_ip_adapter) {
  RandomSdSpec s;
  if (with_ip_adapter)
    s.image_encoder_config = {{"architectures", {"CLIPVisionModelWithProjection"}}, {"hidden_size", 32},
                              {"intermediate_size", 64}, {"num_hidden_layers", 2}, {"num_attention_heads", 4},
                              {"image_size", 32}, {"patch_size", 8}, {"projection_dim", 16}, {"hidden_act", "quick_gelu"}};
  s.unet_config = {{"_class_name", "UNet2DConditionModel"}, {"block_out_channels", {32, 64}},
                   {"down_block_types", {"CrossAttnDownBlock2D", "DownBlock2D"}},
                   {"up_block_types", {"UpBlock2D", "CrossAttnUpBlock2D"}}, {"layers_per_block", 1},
                   {"attention_head_dim", 4}, {"cross_attention_dim", 32}, {"norm_num_groups", 16},
                   {"in_channels", 4}, {"out_channels", 4}, {"sample_size", 8}};
  s.vae_config = {{"_class_name", "AutoencoderKL"}, {"block_out_channels", {16, 32}},
                  {"down_block_types", {"DownEncoderBlock2D", "DownEncoderBlock2D"}},
                  {"up_block_types", {"UpDecoderBlock2D", "UpDecoderBlock2D"}}, {"layers_per_block", 1},
                  {"norm_num_groups", 8}, {"latent_channels", 4}, {"scaling_factor", 0.18215}, {"sample_size", 16}};
  s.text_encoder_config = {{"architectures", {"CLIPTextModel"}}, {"vocab_size", 49408}, {"hidden_size", 32},
                           {"intermediate_size", 64}, {"num_hidden_layers", 2}, {"num_attention_heads", 4},
                           {"max_position_embeddings", 77}, {"hidden_act", "quick_gelu"}, {"projection_dim", 32},
                           {"bos_token_id", 49406}, {"eos_token_id", 49407}, {"pad_token_id", 49407}};
  s.tokenizer_dir = tokenizer_dir;
  return s;
}

namespace {

void write_json(const fs::path& p, const Json& j) {
  fs::create_directories(p.parent_path());
  std::ofstream f(p);
  if (!f) throw IoError(p.string() + ": cannot write");
  f << j.dump(2) << "\n";
}

void write_weights(const fs::path& p, torch::nn::Module& m, bool f16) {
  std::vector<std::pair<std::string, at::Tensor>> ts;
  for (const auto& kv : m.named_parameters(true)) ts.emplace_back(kv.key(), f16 ? kv.value().to(at::kHalf) : kv.value());
  for (const auto& kv : m.named_buffers(true)) ts.emplace_back(kv.key(), kv.value());
  fs::create_directories(p.parent_path());
  write_safetensors(p.string(), ts, {{"format", "pt"}});
}

}  // namespace

void write_random_sd_pipeline(const std::string& dir, const RandomSdSpec& spec) {
  torch::NoGradGuard no_grad;
  at::manual_seed(spec.seed);
  const fs::path d(dir);
  fs::create_directories(d);
  Json index = {{"_class_name", "StableDiffusionPipeline"},
                {"unet", {"diffusers", "UNet2DConditionModel"}},
                {"vae", {"diffusers", "AutoencoderKL"}},
                {"text_encoder", {"transformers", "CLIPTextModel"}},
                {"tokenizer", {"transformers", "CLIPTokenizer"}},
                {"scheduler", {"diffusers", "EulerDiscreteScheduler"}}};
  if (spec.image_encoder_config.is_object()) index["image_encoder"] = {"transformers", "CLIPVisionModelWithProjection"};
  write_json(d / "model_index.json", index);
  {
    UNet2DCondition unet(UNetConfig::from_json(spec.unet_config, "unet config"));
    write_json(d / "unet/config.json", spec.unet_config);
    write_weights(d / "unet/diffusion_pytorch_model.safetensors", *unet, spec.f16);
  }
  {
    AutoencoderKL vae(VaeConfig::from_json(spec.vae_config, "vae config"));
    write_json(d / "vae/config.json", spec.vae_config);
    write_weights(d / "vae/diffusion_pytorch_model.safetensors", *vae, spec.f16);
  }
  {
    ClipTextModel text(ClipTextConfig::from_json(spec.text_encoder_config, "text encoder config"), false);
    write_json(d / "text_encoder/config.json", spec.text_encoder_config);
    write_weights(d / "text_encoder/model.safetensors", *text, spec.f16);
  }
  if (spec.image_encoder_config.is_object()) {
    ClipVisionModel enc(ClipVisionConfig::from_json(spec.image_encoder_config, "image encoder config"), true);
    write_json(d / "image_encoder/config.json", spec.image_encoder_config);
    write_weights(d / "image_encoder/model.safetensors", *enc, spec.f16);
    const int64_t size = spec.image_encoder_config.value("image_size", 224);
    write_json(d / "image_encoder/preprocessor_config.json",
               {{"size", {{"shortest_edge", size}}}, {"crop_size", {{"height", size}, {"width", size}}},
                {"do_resize", true}, {"do_center_crop", true}, {"resample", 3}});
    UNet2DCondition unet(UNetConfig::from_json(spec.unet_config, "unet config"));
    IpAdapterConfig c;
    c.image_dim = spec.image_encoder_config.value("projection_dim", 512);
    c.cross_dim = unet->config().cross_attention_dim;
    for (const auto& l : unet->cross_attention_layers()) c.layer_dims.push_back(l.second->to_q->weight.size(0));
    IpAdapter ip(c);
    save_ip_adapter(ip, (d / "ip-adapter.safetensors").string());
  }
  fs::create_directories(d / "tokenizer");
  for (const char* f : {"vocab.json", "merges.txt"}) {
    const fs::path src = fs::path(spec.tokenizer_dir) / f;
    if (!fs::is_regular_file(src)) throw IoError(src.string() + ": tokenizer file missing");
    fs::copy_file(src, d / "tokenizer" / f, fs::copy_options::overwrite_existing);
  }
  write_json(d / "tokenizer/tokenizer_config.json", {{"model_max_length", 77}, {"pad_token", "<|endoftext|>"}});
  Json sched = sd15_scheduler_config();
  sched["_class_name"] = "EulerDiscreteScheduler";
  write_json(d / "scheduler/scheduler_config.json", sched);
}

}  // namespace iris
