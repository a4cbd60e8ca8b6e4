#include "diffusion/ldm_names.h"

namespace iris {

namespace {

std::string num(size_t i) { return std::to_string(i); }

// An LDM ResBlock (in_layers / emb_layers / out_layers / skip_connection) at `from`.
void unet_resnet(RenameTable& t, const std::string& from, const std::string& to) {
  t.prefix(from + "in_layers.0.", to + "norm1.");
  t.prefix(from + "in_layers.2.", to + "conv1.");
  t.prefix(from + "emb_layers.1.", to + "time_emb_proj.");
  t.prefix(from + "out_layers.0.", to + "norm2.");
  t.prefix(from + "out_layers.3.", to + "conv2.");
  t.prefix(from + "skip_connection.", to + "conv_shortcut.");
}

bool has_attention(const std::string& block_type) { return block_type.rfind("CrossAttn", 0) == 0; }

}  // namespace

RenameTable ldm_unet_renames(const UNetConfig& c, const std::string& p) {
  RenameTable t;
  t.prefix(p + "time_embed.0.", "time_embedding.linear_1.");
  t.prefix(p + "time_embed.2.", "time_embedding.linear_2.");
  t.prefix(p + "input_blocks.0.0.", "conv_in.");
  t.prefix(p + "out.0.", "conv_norm_out.");
  t.prefix(p + "out.2.", "conv_out.");
  const size_t n = c.block_out_channels.size();
  // input_blocks: 0 is conv_in, then per down block its layers and (if any) a downsampler.
  size_t idx = 1;
  for (size_t i = 0; i < n; ++i) {
    const std::string down = "down_blocks." + num(i) + ".";
    for (int64_t j = 0; j < c.layers_per_block[i]; ++j, ++idx) {
      const std::string from = p + "input_blocks." + num(idx) + ".";
      unet_resnet(t, from + "0.", down + "resnets." + num(j) + ".");
      if (has_attention(c.down_block_types[i])) t.prefix(from + "1.", down + "attentions." + num(j) + ".");
    }
    if (i + 1 < n) t.prefix(p + "input_blocks." + num(idx++) + ".0.op.", down + "downsamplers.0.conv.");
  }
  unet_resnet(t, p + "middle_block.0.", "mid_block.resnets.0.");
  t.prefix(p + "middle_block.1.", "mid_block.attentions.0.");
  unet_resnet(t, p + "middle_block.2.", "mid_block.resnets.1.");
  // output_blocks: per up block, layers_per_block + 1 layers; the last one carries the
  // upsampler after its resnet (and attention, if the block has one).
  idx = 0;
  for (size_t i = 0; i < n; ++i) {
    const std::string up = "up_blocks." + num(i) + ".";
    const bool attn = has_attention(c.up_block_types[i]);
    const int64_t layers = c.layers_per_block[n - 1 - i] + 1;
    for (int64_t j = 0; j < layers; ++j, ++idx) {
      const std::string from = p + "output_blocks." + num(idx) + ".";
      unet_resnet(t, from + "0.", up + "resnets." + num(j) + ".");
      if (attn) t.prefix(from + "1.", up + "attentions." + num(j) + ".");
      if (j == layers - 1 && i + 1 < n) t.prefix(from + (attn ? "2" : "1") + ".conv.", up + "upsamplers.0.conv.");
    }
  }
  return t;
}

namespace {

void vae_resnet(RenameTable& t, const std::string& from, const std::string& to) {
  t.prefix(from, to);
  t.prefix(from + "nin_shortcut.", to + "conv_shortcut.");
}

void vae_mid(RenameTable& t, const std::string& from, const std::string& to) {
  vae_resnet(t, from + "block_1.", to + "resnets.0.");
  vae_resnet(t, from + "block_2.", to + "resnets.1.");
  t.prefix(from + "attn_1.norm.", to + "attentions.0.group_norm.");
  t.prefix(from + "attn_1.q.", to + "attentions.0.to_q.");
  t.prefix(from + "attn_1.k.", to + "attentions.0.to_k.");
  t.prefix(from + "attn_1.v.", to + "attentions.0.to_v.");
  t.prefix(from + "attn_1.proj_out.", to + "attentions.0.to_out.0.");
}

}  // namespace

RenameTable ldm_vae_renames(const VaeConfig& c, const std::string& p) {
  RenameTable t;
  const size_t n = c.block_out_channels.size();
  for (const char* part : {"encoder.", "decoder."}) {
    t.prefix(p + part + "conv_in.", std::string(part) + "conv_in.");
    t.prefix(p + part + "conv_out.", std::string(part) + "conv_out.");
    t.prefix(p + part + "norm_out.", std::string(part) + "conv_norm_out.");
    vae_mid(t, p + part + "mid.", std::string(part) + "mid_block.");
  }
  for (size_t i = 0; i < n; ++i) {
    const std::string from = p + "encoder.down." + num(i) + ".";
    const std::string to = "encoder.down_blocks." + num(i) + ".";
    for (int64_t j = 0; j < c.layers_per_block; ++j) vae_resnet(t, from + "block." + num(j) + ".", to + "resnets." + num(j) + ".");
    t.prefix(from + "downsample.conv.", to + "downsamplers.0.conv.");
  }
  // The decoder's LDM "up" list is stored deepest-first: up.{n-1-i} is diffusers' up_blocks.i.
  for (size_t i = 0; i < n; ++i) {
    const std::string from = p + "decoder.up." + num(n - 1 - i) + ".";
    const std::string to = "decoder.up_blocks." + num(i) + ".";
    for (int64_t j = 0; j <= c.layers_per_block; ++j) vae_resnet(t, from + "block." + num(j) + ".", to + "resnets." + num(j) + ".");
    t.prefix(from + "upsample.conv.", to + "upsamplers.0.conv.");
  }
  t.prefix(p + "quant_conv.", "quant_conv.");
  t.prefix(p + "post_quant_conv.", "post_quant_conv.");
  return t;
}

RenameTable ldm_text_encoder_renames(const std::string& p) {
  RenameTable t;
  t.prefix(p + "text_model.", "text_model.");
  t.prefix(p + "embeddings.", "text_model.embeddings.");
  t.prefix(p + "encoder.", "text_model.encoder.");
  t.prefix(p + "final_layer_norm.", "text_model.final_layer_norm.");
  t.ignore(p + "text_model.embeddings.position_ids");
  return t;
}

}  // namespace iris
