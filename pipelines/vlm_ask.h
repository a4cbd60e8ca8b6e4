#pragma once
// Every way Iris answers a question about an image, behind one object: a LLaVA folder (plain
// decoding, or with VAR / LocoRE / SGRS and the saliency map), a LLaVA folder with a ViSpec
// draft (speculative decoding, same output), or a VISOR folder at a budget (or its router's).
// `iris ask` and the studio's Ask tab both call it, so the rules (which options go with which
// model) live in one place.
//
//   VlmAsker asker;
//   VlmAskOptions o;  o.vqa.faithfulness.locore = true;  o.vqa.saliency_map = true;
//   VlmAskResult r = asker.ask("assets/starter/vlm", image, "Describe the image.", o, on_text);
//   // r.answer.text, r.stats (one or two lines), r.answer.saliency
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/image.h"
#include "pipelines/vqa.h"

namespace iris {

struct VisorModel;

struct VlmAskOptions {
  VqaOptions vqa;             // sampling, stops, template, faithfulness methods, saliency map
  std::string draft;          // ViSpec draft folder ("" = none): speculative decoding
  int64_t draft_chain = 0;    // draft a chain of K tokens per cycle; 0: the dynamic tree
  bool compare = false;       // with a draft: also decode plainly, report speedup and equality
  int64_t visor_budget = -1;  // VISOR folders: 0 .. max budget, or -1 for the router
};

struct VlmAskResult {
  VqaAnswer answer;
  // The stats line (prompt/generated tokens, prefill, tokens/s, stop), then what the path
  // adds: visual FLOPs; ViSpec's tau, cycles and speedup; the methods run, VAR's and SGRS'
  // counts.
  std::vector<std::string> stats;
  bool visor = false, speculative = false;
  bool identical = true;  // with a draft and compare: the plain output was the same
};

// ConfigError naming the option when it does not fit: methods or a saliency map with a draft
// or on a VISOR folder, a draft on a VISOR folder, a negative chain, compare without a draft.
// (Options that depend on the model, e.g. the budget range, are checked in ask().)
void validate_ask_options(const VlmAskOptions& o, bool visor_folder);

// The saliency map [side, side] (VqaAnswer::saliency) as a heat map over the part of `picture`
// the model saw (the central square that CLIP's resize + centre crop keeps), at least
// `min_side` pixels wide (small pictures are enlarged for viewing).
Image saliency_overlay(const Image& picture, const at::Tensor& map, int min_side = 256);

class VlmAsker {
 public:
  VlmAsker();
  ~VlmAsker();
  VlmAsker(VlmAsker&&) noexcept;
  VlmAsker& operator=(VlmAsker&&) noexcept;

  // Loads `folder` (a LLaVA or VISOR folder) unless it is the one loaded; a draft is loaded
  // (and attached) the same way. Errors name the folder and the file or key.
  VlmAskResult ask(const std::string& folder, const Image& image, const std::string& question,
                   const VlmAskOptions& options, const TextCallback& on_text = nullptr);
  // The loaded model (after an ask() or load()); null when none is.
  VqaModel* model();
  void load(const std::string& folder);

 private:
  std::string folder_, draft_folder_;
  std::unique_ptr<VqaModel> llava_;
  std::unique_ptr<VisorModel> visor_;
  std::unique_ptr<VispecDraft> draft_;
};

}  // namespace iris
