#pragma once
// Command-line flags of the faithfulness methods (vlm/faithfulness.h), shared by `iris ask` and
// any other command that generates text from an image:
//   --var --var-sink-dims 1415,2533 [--var-p 0.6 --var-rho 0.5 --var-tau 20]
//   --locore [--locore-beta 0.15 --locore-window 8 --locore-layers 8,9,...]
//   --sgrs [--sgrs-k 5 --sgrs-alpha 0.6 --sgrs-window 5 --sgrs-tries 3 --saliency-layers 6,7,8]
#include <CLI/CLI.hpp>

#include "vlm/faithfulness.h"

namespace iris::cli {

inline void add_faithfulness_flags(CLI::App* cmd, FaithfulnessOptions& fo) {
  const char* group = "Faithfulness";
  cmd->add_flag("--var", fo.var, "VAR: redistribute attention from sink tokens to the image")->group(group);
  cmd->add_option("--var-sink-dims", fo.var_options.sink_dims, "VAR: the model's sink dimensions (iris vlm sinks)")
      ->delimiter(',')
      ->group(group);
  cmd->add_option("--var-p", fo.var_options.p, "VAR: fraction of sink attention kept")->capture_default_str()->group(group);
  cmd->add_option("--var-rho", fo.var_options.rho, "VAR: min non-sink share of a row's image attention")
      ->capture_default_str()
      ->group(group);
  cmd->add_option("--var-first-layer", fo.var_options.first_layer, "VAR: first layer changed")
      ->capture_default_str()
      ->group(group);
  cmd->add_option("--var-last-layer", fo.var_options.last_layer, "VAR: last layer changed (< 0: from the end)")
      ->capture_default_str()
      ->group(group);
  cmd->add_option("--var-tau", fo.var_options.tau, "VAR: sink threshold on |x_d| / RMS(x)")->capture_default_str()->group(group);
  cmd->add_flag("--locore", fo.locore, "LocoRE: boost attention to the last generated tokens")->group(group);
  cmd->add_option("--locore-beta", fo.locore_options.beta, "LocoRE: gamma = 1 + beta")->capture_default_str()->group(group);
  cmd->add_option("--locore-window", fo.locore_options.window, "LocoRE: generated tokens boosted")
      ->capture_default_str()
      ->group(group);
  cmd->add_option("--locore-layers", fo.locore_options.layers, "LocoRE: layers (default: the middle half)")
      ->delimiter(',')
      ->group(group);
  cmd->add_flag("--sgrs", fo.sgrs, "SGRS: saliency-guided rejection sampling")->group(group);
  cmd->add_option("--sgrs-k", fo.sgrs_options.top_k, "SGRS: top-K candidates")->capture_default_str()->group(group);
  cmd->add_option("--sgrs-alpha", fo.sgrs_options.alpha, "SGRS: threshold factor")->capture_default_str()->group(group);
  cmd->add_option("--sgrs-window", fo.sgrs_options.window, "SGRS: accepted tokens in the running mean")
      ->capture_default_str()
      ->group(group);
  cmd->add_option("--sgrs-tries", fo.sgrs_options.max_tries, "SGRS: draws before the fallback")
      ->capture_default_str()
      ->group(group);
  cmd->add_option("--saliency-layers", fo.saliency.layers, "SGRS / saliency maps: layers differentiated (default 6,7,8; the middle half on models of <= 8 layers)")
      ->delimiter(',')
      ->group(group);
}

}  // namespace iris::cli
