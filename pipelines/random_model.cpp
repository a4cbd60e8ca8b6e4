#include "pipelines/random_model.h"

#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>

#include <torch/nn/module.h>
#include <torch/utils.h>

#include "core/error.h"
#include "core/tensor_io.h"
#include "diffusion/clip.h"
#include "diffusion/unet.h"
#include "diffusion/vae.h"
#include "pipelines/sd_model.h"
#include "adapters/ip_adapter.h"
#include "core/sentencepiece.h"
#include "vlm/llava.h"

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

void write_json(const std::string& path, const Json& j) {
  const fs::path p(path);
  fs::create_directories(p.parent_path());
  std::ofstream f(p);
  if (!f) throw IoError(p.string() + ": cannot write");
  f << j.dump(2) << "\n";
}

void write_weights(const std::string& path, torch::nn::Module& m, bool f16) {
  const fs::path p(path);
  std::vector<std::pair<std::string, at::Tensor>> ts;
  for (const auto& kv : m.named_parameters(true)) ts.emplace_back(kv.key(), f16 ? kv.value().to(at::kHalf) : kv.value());
  for (const auto& kv : m.named_buffers(true)) ts.emplace_back(kv.key(), kv.value());
  fs::create_directories(p.parent_path());
  write_safetensors(p.string(), ts, {{"format", "pt"}});
}

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

// =============================================================================================
// LLaVA

namespace {

// The few protobuf wire-format pieces a SentencePiece ModelProto needs.
std::string pb_varint(uint64_t v) {
  std::string s;
  for (; v >= 0x80; v >>= 7) s += static_cast<char>((v & 0x7F) | 0x80);
  return s + static_cast<char>(v);
}
std::string pb_tag(uint32_t field, uint32_t wire) { return pb_varint((static_cast<uint64_t>(field) << 3) | wire); }
std::string pb_int(uint32_t field, uint64_t v) { return pb_tag(field, 0) + pb_varint(v); }
std::string pb_bytes(uint32_t field, const std::string& b) { return pb_tag(field, 2) + pb_varint(b.size()) + b; }
std::string pb_float(uint32_t field, float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  std::string s = pb_tag(field, 5);
  for (int i = 0; i < 4; ++i) s += static_cast<char>((bits >> (8 * i)) & 0xFF);
  return s;
}

}  // namespace

std::string tiny_sentencepiece_model() {
  enum Type { kNormal = 1, kUnknown = 2, kControl = 3, kByte = 6 };
  std::string model;
  auto piece = [&](const std::string& p, float score, int type) {
    std::string m = pb_bytes(1, p) + pb_float(2, score);
    if (type != kNormal) m += pb_int(3, static_cast<uint64_t>(type));
    model += pb_bytes(1, m);  // ModelProto.pieces
  };
  piece("<unk>", 0, kUnknown);
  piece("<s>", 0, kControl);
  piece("</s>", 0, kControl);
  static const char kHex[] = "0123456789ABCDEF";
  for (int b = 0; b < 256; ++b) piece(std::string("<0x") + kHex[b >> 4] + kHex[b & 15] + ">", 0, kByte);
  // Merged pieces: every prefix (2+ characters) of a few words, so BPE can build them left to
  // right; a longer prefix merges later (lower score).
  const std::string ws = "\xE2\x96\x81";  // U+2581, SentencePiece's space
  std::set<std::string> seen;
  float score = -1.0f;
  for (const char* w : {"USER", "ASSISTANT", "the", "is", "what", "a", "in", "image", "this", "color", "of", "and",
                        "there", "shape", "red", "blue", "green", "square", "circle", "yes", "no"}) {
    const std::string word = ws + w;
    for (size_t n = ws.size() + 1; n <= word.size(); ++n) {
      const std::string p = word.substr(0, n);
      if (seen.insert(p).second) piece(p, score, kNormal);
      score -= 1.0f;
    }
  }
  // Single characters last: the space marker and printable ASCII.
  if (seen.insert(ws).second) piece(ws, -1000.0f, kNormal);
  for (char c = 33; c < 127; ++c)
    if (seen.insert(std::string(1, c)).second) piece(std::string(1, c), -1000.0f, kNormal);
  model += pb_bytes(2, pb_int(3, 2) + pb_int(35, 1));  // trainer_spec: BPE, byte_fallback
  // normalizer_spec: identity, add_dummy_prefix, keep whitespace runs (as Llama), escape spaces
  model += pb_bytes(3, pb_bytes(1, "identity") + pb_int(3, 1) + pb_int(4, 0) + pb_int(5, 1));
  return model;
}

RandomLlavaSpec tiny_llava_spec(bool with_ftz) {
  const int64_t pieces =
      static_cast<int64_t>(SentencePieceTokenizer::from_bytes(tiny_sentencepiece_model(), "tiny tokenizer").vocab_size());
  RandomLlavaSpec s;
  s.config = {{"architectures", {"LlavaForConditionalGeneration"}},
              {"model_type", "llava"},
              {"image_token_index", pieces},
              {"projector_hidden_act", "gelu"},
              {"vision_feature_layer", -2},
              {"vision_feature_select_strategy", "default"},
              {"vision_config",
               {{"model_type", "clip_vision_model"}, {"hidden_size", 32}, {"intermediate_size", 64},
                {"num_hidden_layers", 3}, {"num_attention_heads", 4}, {"image_size", 32}, {"patch_size", 8},
                {"projection_dim", 32}, {"hidden_act", "quick_gelu"}}},
              {"text_config",
               {{"model_type", "llama"}, {"vocab_size", pieces + 1}, {"hidden_size", 64}, {"intermediate_size", 128},
                {"num_hidden_layers", 2}, {"num_attention_heads", 4}, {"num_key_value_heads", 2},
                {"max_position_embeddings", 256}, {"rms_norm_eps", 1e-5}, {"bos_token_id", 1}, {"eos_token_id", 2}}}};
  if (with_ftz)
    s.config["ftz"] = {{"augmenting_encoder",
                        {{"model_type", "conv"}, {"num_channels", 3}, {"image_size", 32}, {"patch_size", 8},
                         {"hidden_size", 24}, {"num_layers", 3}, {"norm_groups", 4}}},
                       {"pairs", {{1, 1}, {2, 3}}},
                       {"heads", 4}};
  return s;
}

void write_random_llava(const std::string& dir, const RandomLlavaSpec& spec) {
  torch::NoGradGuard no_grad;
  const fs::path d(dir);
  fs::create_directories(d);
  LlavaForConditionalGeneration model(LlavaConfig::from_json(spec.config, "random LLaVA config"));
  // Wider than transformers' 0.02 so that a random model's greedy tokens vary.
  model->init_weights(spec.seed, 0.2);
  write_json(d / "config.json", spec.config);
  write_weights(d / "model.safetensors", *model, false);
  {
    std::ofstream f(d / "tokenizer.model", std::ios::binary);
    const std::string bytes = tiny_sentencepiece_model();
    if (!(f << bytes)) throw IoError((d / "tokenizer.model").string() + ": cannot write");
  }
  const int64_t size = model->config().vision.image_size;
  write_json(d / "preprocessor_config.json",
             {{"size", {{"shortest_edge", size}}}, {"crop_size", {{"height", size}, {"width", size}}},
              {"do_resize", true}, {"do_center_crop", true}, {"resample", 3}});
}

}  // namespace iris
