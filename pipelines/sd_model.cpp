#include "pipelines/sd_model.h"

#include <filesystem>

#include "core/checkpoint.h"
#include "core/clip_preprocess_file.h"
#include "core/error.h"
#include "core/runtime.h"
#include "core/state_dict.h"
#include "diffusion/ldm_names.h"

namespace fs = std::filesystem;

namespace iris {

Json sd15_scheduler_config() {
  return Json{{"_class_name", "PNDMScheduler"}, {"num_train_timesteps", 1000}, {"beta_start", 0.00085},
              {"beta_end", 0.012},            {"beta_schedule", "scaled_linear"}, {"steps_offset", 1},
              {"set_alpha_to_one", false},    {"clip_sample", false},            {"prediction_type", "epsilon"},
              {"timestep_spacing", "leading"}, {"skip_prk_steps", true}};
}

namespace {

// CLIP ViT-L/14's text tower, as SD 1.x single files embed it.
Json sd1_text_encoder_config() {
  return Json{{"vocab_size", 49408}, {"hidden_size", 768}, {"intermediate_size", 3072},
              {"num_hidden_layers", 12}, {"num_attention_heads", 12}, {"max_position_embeddings", 77},
              {"hidden_act", "quick_gelu"}, {"layer_norm_eps", 1e-5}, {"projection_dim", 768},
              {"bos_token_id", 0}, {"eos_token_id", 2}, {"pad_token_id", 1}};
}

void note(const SdLoadOptions& o, const std::string& s) {
  if (o.log) o.log(s);
}

// A single file's UNet config: SD 1.x's, adjusted to what the weights say (cross-attention
// width, linear projections and head widths of SD 2.x).
UNetConfig infer_ldm_unet_config(const TensorStore& w, const std::string& path, const SdLoadOptions& o) {
  const std::string p = "model.diffusion_model.";
  const std::string probe = p + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight";
  if (!w.contains(probe))
    throw CheckpointError(path + ": not a Stable Diffusion LDM checkpoint (no " + probe + ")");
  UNetConfig c = UNetConfig::sd15();
  c.cross_attention_dim = w.info(probe).shape[1];
  c.in_channels = w.info(p + "input_blocks.0.0.weight").shape[1];
  c.block_out_channels[0] = w.info(p + "input_blocks.0.0.weight").shape[0];
  c.use_linear_projection = w.info(p + "input_blocks.1.1.proj_in.weight").shape.size() == 2;
  if (c.cross_attention_dim == 1024) {  // SD 2.x: 64-wide heads
    c.num_attention_heads = {5, 10, 20, 20};
    note(o, "single file: SD 2.x layout (cross-attention 1024, linear projections)");
  }
  return c;
}

}  // namespace

SdModel SdModel::load(const std::string& path, const SdLoadOptions& o) {
  SdModel m;
  m.source = path;
  m.device = select_device(o.device);
  Checkpoint ck = Checkpoint::open(path);
  LoadOptions strict;
  if (ck.kind() == Checkpoint::Kind::Pipeline) {
    const ModelPart& unet = ck.part("unet");
    const ModelPart& vae = ck.part("vae");
    for (const ModelPart* part : {&unet, &vae})
      if (!part->has_weights()) throw CheckpointError(part->dir + ": no weights (.safetensors)");
    m.unet = UNet2DCondition(UNetConfig::from_json(unet.config, unet.config_path));
    load_state_dict(*m.unet, *unet.weights, RenameTable(), strict);
    m.vae = AutoencoderKL(VaeConfig::from_json(vae.config, vae.config_path));
    load_state_dict(*m.vae, *vae.weights, RenameTable(), strict);
    m.text_encoder = load_clip_text_model(ck.part("text_encoder"));
    m.tokenizer = std::make_shared<ClipTokenizer>(ClipTokenizer::from_folder(ck.part("tokenizer").dir));
    m.scheduler_config = ck.has_part("scheduler") && ck.part("scheduler").config.is_object()
                             ? ck.part("scheduler").config
                             : sd15_scheduler_config();
    const ModelPart& tok = ck.part("tokenizer");
    // Padding is <|endoftext|> (49407 in CLIP's vocabulary; small trained vocabularies put it elsewhere).
    m.pad_token_id = m.tokenizer->eos_id();
    if (tok.config.is_object() && tok.config.contains("pad_token") && tok.config["pad_token"] == "!") m.pad_token_id = 0;
  } else if (ck.kind() == Checkpoint::Kind::SingleFile) {
    const TensorStore& w = *ck.parts()[0].weights;
    if (w.contains("cond_stage_model.model.token_embedding.weight"))
      throw CheckpointError(path + ": SD 2.x single files with an OpenCLIP text encoder are not supported; use the diffusers folder");
    UNetConfig uc = infer_ldm_unet_config(w, path, o);
    m.unet = UNet2DCondition(uc);
    RenameTable ut = ldm_unet_renames(uc);
    LoadOptions only_unet;
    only_unet.source_prefix = "";
    // One file, three models: each load ignores the other models' prefixes.
    ut.ignore("first_stage_model.").ignore("cond_stage_model.").ignore("model_ema.").ignore("alphas_cumprod")
        .ignore("betas").ignore("log_one_minus_alphas_cumprod").ignore("sqrt_").ignore("posterior_")
        .ignore("alphas_cumprod_prev").ignore("model.diffusion_model.label_emb");
    load_state_dict(*m.unet, w, ut, strict);
    VaeConfig vc = VaeConfig::sd();
    m.vae = AutoencoderKL(vc);
    RenameTable vt = ldm_vae_renames(vc);
    vt.ignore("model.").ignore("cond_stage_model.").ignore("model_ema.").ignore("alphas_cumprod").ignore("betas")
        .ignore("log_one_minus_alphas_cumprod").ignore("sqrt_").ignore("posterior_").ignore("alphas_cumprod_prev");
    LoadOptions vo;
    vo.reshape_1x1 = true;
    load_state_dict(*m.vae, w, vt, vo);
    m.text_encoder = ClipTextModel(ClipTextConfig::from_json(sd1_text_encoder_config(), "SD 1.x text encoder"), false);
    RenameTable tt = ldm_text_encoder_renames();
    tt.ignore("model.").ignore("first_stage_model.").ignore("model_ema.").ignore("alphas_cumprod").ignore("betas")
        .ignore("log_one_minus_alphas_cumprod").ignore("sqrt_").ignore("posterior_").ignore("alphas_cumprod_prev");
    load_state_dict(*m.text_encoder, w, tt, strict);
    if (o.tokenizer_dir.empty())
      throw ConfigError(path + ": a single-file checkpoint carries no tokenizer; pass a tokenizer folder "
                               "(vocab.json + merges.txt, or bpe_simple_vocab_16e6.txt.gz)");
    m.tokenizer = std::make_shared<ClipTokenizer>(ClipTokenizer::from_folder(o.tokenizer_dir));
    m.scheduler_config = sd15_scheduler_config();
  } else {
    throw CheckpointError(path + ": expected a diffusers pipeline folder (model_index.json) or a single .safetensors file");
  }
  if (!o.ip_adapter.empty() || o.with_image_encoder) {
    std::string enc_dir = o.image_encoder_dir;
    // An image_encoder/ folder beside the adapter file is the encoder it was trained with (the
    // IP-Adapter releases' layout, and `iris train ip-adapter --train-image-encoder`'s output):
    // it comes before the pipeline's own.
    if (enc_dir.empty() && !o.ip_adapter.empty()) {
      const fs::path beside = fs::path(o.ip_adapter).parent_path() / "image_encoder";
      if (fs::is_regular_file(beside / "config.json")) {
        enc_dir = beside.string();
        if (o.log) o.log("image encoder: " + enc_dir + " (beside the IP-Adapter)");
      }
    }
    if (enc_dir.empty() && ck.kind() == Checkpoint::Kind::Pipeline && ck.has_part("image_encoder"))
      enc_dir = ck.part("image_encoder").dir;
    if (enc_dir.empty())
      throw ConfigError((o.ip_adapter.empty() ? path : o.ip_adapter) +
                        ": an IP-Adapter needs a CLIP image encoder: the model has no image_encoder/ folder; pass one");
    Checkpoint enc = Checkpoint::open(enc_dir);
    m.image_encoder = load_clip_vision_model(enc.parts()[0]);
    m.image_encoder_dir = enc_dir;
    m.image_encoder->eval();
    // The encoder's own processor config, else the pipeline's feature_extractor/, else the
    // encoder's own image size.
    std::string pre = enc_dir + "/preprocessor_config.json";
    if (!fs::is_regular_file(pre) && ck.kind() == Checkpoint::Kind::Pipeline && ck.has_part("feature_extractor"))
      pre = ck.part("feature_extractor").dir + "/preprocessor_config.json";
    m.image_preprocess = read_clip_preprocess(pre, static_cast<int>(m.image_encoder->config().image_size));
    if (!o.ip_adapter.empty()) {
      m.ip_adapter = load_ip_adapter_file(o.ip_adapter, m.unet);
      if (m.ip_adapter->config().variant == IpVariant::Base && !m.image_encoder->with_projection())
        throw ConfigError(o.ip_adapter + ": a base IP-Adapter reads image_embeds, and the image encoder " + enc_dir +
                          " has no projection (e.g. a LLaVA vision tower); use it with an IP-Adapter Plus");
    }
  }
  if (!o.style_adapter.empty()) {
    m.style_adapter = load_style_adapter(o.style_adapter, m.unet);
    m.style_adapter_path = o.style_adapter;
  }
  if (!o.sk_adapter.empty()) m.sk_adapter = load_skeleton_adapter(o.sk_adapter, m.unet);
  m.unet->eval();
  m.vae->eval();
  m.text_encoder->eval();
  if (!m.device.is_cpu()) {
    m.unet->to(m.device);
    m.vae->to(m.device);
    m.text_encoder->to(m.device);
    if (m.image_encoder) m.image_encoder->to(m.device);
    if (m.ip_adapter) m.ip_adapter->to(m.device);
    if (m.style_adapter) m.style_adapter->to(m.device);
    if (m.sk_adapter) m.sk_adapter->to(m.device);
  }
  if (m.text_encoder->config().hidden_size != m.unet->config().cross_attention_dim)
    throw ConfigError(path + ": text encoder width " + std::to_string(m.text_encoder->config().hidden_size) +
                      " does not match the UNet's cross_attention_dim " +
                      std::to_string(m.unet->config().cross_attention_dim));
  return m;
}

// ---- Python literal -> JSON ----

namespace {

class PyLiteralParser {
 public:
  PyLiteralParser(const std::string& s, const std::string& what) : s_(s), what_(what) {}
  Json parse() {
    Json v = value();
    skip_ws();
    if (pos_ != s_.size()) fail("trailing characters");
    return v;
  }

 private:
  [[noreturn]] void fail(const std::string& msg) {
    throw FormatError(what_ + ": Python literal: " + msg + " at offset " + std::to_string(pos_));
  }
  void skip_ws() {
    while (pos_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[pos_]))) ++pos_;
  }
  bool consume(char c) {
    skip_ws();
    if (pos_ < s_.size() && s_[pos_] == c) {
      ++pos_;
      return true;
    }
    return false;
  }
  bool keyword(const char* k) {
    const size_t n = std::strlen(k);
    if (s_.compare(pos_, n, k) == 0) {
      pos_ += n;
      return true;
    }
    return false;
  }
  Json value() {
    if (++depth_ > 200) fail("nested too deeply");
    skip_ws();
    if (pos_ >= s_.size()) fail("unexpected end");
    Json out;
    const char c = s_[pos_];
    if (c == '{') out = dict();
    else if (c == '[' || c == '(') out = list(c == '[' ? ']' : ')');
    else if (c == '\'' || c == '"') out = string();
    else if (keyword("None")) out = nullptr;
    else if (keyword("True")) out = true;
    else if (keyword("False")) out = false;
    else out = number();
    --depth_;
    return out;
  }
  Json dict() {
    ++pos_;
    Json out = Json::object();
    if (consume('}')) return out;
    do {
      skip_ws();
      Json key = value();
      std::string k = key.is_string() ? key.get<std::string>() : key.dump();
      if (!consume(':')) fail("expected ':'");
      out[k] = value();
    } while (consume(','));
    if (!consume('}')) fail("expected '}'");
    return out;
  }
  Json list(char close) {
    ++pos_;
    Json out = Json::array();
    if (consume(close)) return out;
    do {
      skip_ws();
      if (pos_ < s_.size() && s_[pos_] == close) break;  // trailing comma
      out.push_back(value());
    } while (consume(','));
    if (!consume(close)) fail(std::string("expected '") + close + "'");
    return out;
  }
  Json string() {
    const char q = s_[pos_++];
    std::string out;
    while (pos_ < s_.size() && s_[pos_] != q) {
      char c = s_[pos_++];
      if (c == '\\' && pos_ < s_.size()) {
        char e = s_[pos_++];
        switch (e) {
          case 'n': out += '\n'; break;
          case 't': out += '\t'; break;
          case 'r': out += '\r'; break;
          case '\\': out += '\\'; break;
          case '\'': out += '\''; break;
          case '"': out += '"'; break;
          default: out += '\\'; out += e;
        }
      } else {
        out += c;
      }
    }
    if (pos_ >= s_.size()) fail("unterminated string");
    ++pos_;
    return out;
  }
  Json number() {
    const size_t start = pos_;
    while (pos_ < s_.size() && (std::isalnum(static_cast<unsigned char>(s_[pos_])) || s_[pos_] == '.' ||
                                s_[pos_] == '-' || s_[pos_] == '+'))
      ++pos_;
    const std::string tok = s_.substr(start, pos_ - start);
    if (tok.empty()) fail("unexpected character");
    if (tok == "inf") return std::numeric_limits<double>::infinity();
    if (tok == "nan") return std::numeric_limits<double>::quiet_NaN();
    try {
      return Json::parse(tok);
    } catch (const Json::exception&) {
      fail("bad value \"" + tok + "\"");
    }
  }
  const std::string& s_;
  std::string what_;
  size_t pos_ = 0;
  int depth_ = 0;
};

}  // namespace

Json python_literal_to_json(const std::string& text, const std::string& what) {
  return PyLiteralParser(text, what).parse();
}

}  // namespace iris
