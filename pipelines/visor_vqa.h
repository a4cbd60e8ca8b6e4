#pragma once
// Visual question answering with a VISOR folder (vlm/visor.h): the LLaVA pipeline of
// pipelines/vqa.h (tokenizer, preprocessing, chat template, streaming) with the answer decoded
// by the VISOR model at a chosen budget (or the router's), and the visual compute it cost.
#include <cstdint>
#include <string>

#include "core/image.h"
#include "pipelines/vqa.h"
#include "vlm/visor.h"

namespace iris {

struct VisorModel {
  VqaModel base;                                // tokenizer, preprocessing, template, LLaVA modules
  VisorForConditionalGeneration visor{nullptr}; // shares base.model's modules

  // A VISOR folder: VqaModel::load's checks, then the "visor" block and visor.* weights
  // (ConfigError / CheckpointError naming the key; ConfigError for a plain LLaVA folder).
  static VisorModel load(const std::string& folder);
};

struct VisorAskOptions {
  VqaOptions vqa;
  int64_t budget = -1;  // 0 .. max budget; -1: the router decides
};

struct VisorAnswer {
  VqaAnswer answer;           // text, tokens, stats (prompt_tokens = text tokens + image tokens)
  int64_t budget = 0;         // as run
  bool routed = false;
  VisualWorkload workload;
  VisualFlops flops;          // this answer, VISOR at `budget`
  VisualFlops llava_flops;    // the same answer on the LLaVA path (every layer over the image)
  // "budget 1 (router), visual 12.3 MFLOPs (LLaVA path 98.7, 8.0x less)"
  std::string line() const;
};

VisorAnswer visor_ask(VisorModel& m, const Image& image, const std::string& question, const VisorAskOptions& opt = {},
                      const TextCallback& on_text = nullptr);
// Decodes the image file first (FormatError / IoError naming it).
VisorAnswer visor_ask(VisorModel& m, const std::string& image_path, const std::string& question,
                      const VisorAskOptions& opt = {}, const TextCallback& on_text = nullptr);

// Greedy, stopping at EOS: (question, image, most new tokens) -> answer text, the shape of
// pipelines/vlm_eval.h's VlmAnswerFn, for evaluating a budget (or -1, the router).
std::string visor_answer(VisorModel& m, const std::string& question, const Image& image, int64_t max_new_tokens,
                         int64_t budget);

}  // namespace iris
