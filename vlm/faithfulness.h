#pragma once
// The faithfulness methods behind one options struct, for the VQA pipeline and `iris ask`
// (--var, --var-p, --var-rho, --locore, --sgrs, ...): VAR and LocoRE are hooks installed on
// the model; SGRS replaces the generation loop.
//
//   FaithfulnessOptions fo;  fo.var = true;  fo.var_options.sink_dims = {1415, 2533};
//   FaithfulnessHooks hooks = configure_faithfulness(model, fo);
//   GenerateResult r = generate_faithful(model, prompt, fo, gen);  // prompt: ids or embeds + image_mask
//   remove_faithfulness(model, hooks);
#include <memory>
#include <string>

#include "vlm/llama.h"
#include "vlm/locore.h"
#include "vlm/saliency.h"
#include "vlm/sampling.h"
#include "vlm/sgrs.h"
#include "vlm/var.h"

namespace iris {

struct FaithfulnessOptions {
  bool var = false;
  VarOptions var_options;
  bool locore = false;
  LocoreOptions locore_options;
  bool sgrs = false;
  SgrsOptions sgrs_options;
  SaliencyOptions saliency;  // SGRS' saliency (layers, keys)

  bool any() const { return var || locore || sgrs; }  // any method on
  // ConfigError naming the option on a bad value (only for the methods turned on).
  void validate(const LlamaConfig& cfg) const;
  // "baseline", "var(p=0.6,rho=0.5)+locore(beta=0.15,w=8)+sgrs(K=5,alpha=0.6,W=5,R=3)", ...
  std::string describe() const;
};

// What configure_faithfulness installed (null where a method is off).
struct FaithfulnessHooks {
  std::shared_ptr<VarHook> var;
  std::shared_ptr<LocoreHook> locore;
};

// Validates and installs the hooks of the methods turned on (VAR before LocoRE) on the model.
FaithfulnessHooks configure_faithfulness(LlamaForCausalLM& model, const FaithfulnessOptions& options);
// Removes them (a no-op for hooks that are not installed).
void remove_faithfulness(LlamaForCausalLM& model, const FaithfulnessHooks& hooks);

// One batch-1 generation from a whole prompt (input_ids, or inputs_embeds with image_mask):
// SGRS when options.sgrs, else a prefill and generate_from. Hooks are whatever the model has
// installed (configure_faithfulness). `stats` receives SGRS' counts when it runs.
GenerateResult generate_faithful(LlamaForCausalLM& model, const LlamaInput& prompt, const FaithfulnessOptions& options,
                                 const GenerateOptions& gen = {}, const TokenCallback& on_token = nullptr,
                                 SgrsStats* stats = nullptr);

}  // namespace iris
