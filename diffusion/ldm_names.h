#pragma once
// Rename tables from the original LDM/CompVis single-file naming (model.diffusion_model.*,
// first_stage_model.*, cond_stage_model.transformer.*) to the diffusers names our modules
// use. Built from the config, so any block layout maps, not only SD1.5's.
#include <string>

#include "core/state_dict.h"
#include "diffusion/unet.h"
#include "diffusion/vae.h"

namespace iris {

RenameTable ldm_unet_renames(const UNetConfig& c, const std::string& prefix = "model.diffusion_model.");
RenameTable ldm_vae_renames(const VaeConfig& c, const std::string& prefix = "first_stage_model.");
// SD1.x: cond_stage_model.transformer.text_model.* (older files omit "text_model.").
RenameTable ldm_text_encoder_renames(const std::string& prefix = "cond_stage_model.transformer.");

}  // namespace iris
