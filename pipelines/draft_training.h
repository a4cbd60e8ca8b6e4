#pragma once
// Training a ViSpec draft against its frozen target (METHODS.md "ViSpec", training):
//   1. the target answers each prompt itself (greedy, long answers), so the draft learns the
//      distribution it will have to predict;
//   2. one target pass over prompt + answer gives the features: input embeddings and last
//      hidden states (kept in memory, the target is frozen);
//   3. each step: the draft runs over the sequence (image runs compressed by its adaptor),
//      loss = feature regression (SmoothL1 against the target's next hidden state) + token
//      cross-entropy against the target's next-token distribution, on the answer positions;
//      then `mtp_steps` more passes in which the draft's own outputs replace the target hidden
//      states it reads (multi-token prediction, against shortcut learning).
// Inputs are embeddings + image mask, so a LLaVA prompt (image features spliced in) trains the
// vision adaptor the same way a text prompt trains the rest.
#include <cstdint>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "pipelines/trainer.h"
#include "vlm/llama.h"
#include "vlm/vispec.h"

namespace iris {

struct VqaModel;  // pipelines/vqa.h

// One training sequence with the frozen target's features.
struct DraftExample {
  at::Tensor embeds;      // [1, L, H]: the target's input embeddings of prompt + answer
  at::Tensor hidden;      // [1, L, H]: the target's last hidden states
  at::Tensor image_mask;  // [1, L] bool, or undefined
  int64_t prompt_length = 0;  // the answer starts here
};

// The target answers (greedy, up to answer_tokens) and its features are taken over the whole
// sequence. prompt_embeds [1, P, H], image_mask [1, P] or undefined.
DraftExample make_draft_example(LlamaForCausalLM& target, const at::Tensor& prompt_embeds, const at::Tensor& image_mask,
                                int64_t answer_tokens);
// Text prompt (token ids).
DraftExample make_draft_example(LlamaForCausalLM& target, const std::vector<int64_t>& prompt, int64_t answer_tokens);

struct DraftLossOptions {
  int64_t mtp_steps = 2;        // extra passes fed with the draft's own outputs
  double feature_weight = 1.0;  // SmoothL1 on hidden states
  double token_weight = 0.1;    // cross-entropy against the target's distribution
  double noise = 0.1;           // uniform noise amplitude on the input hidden states (training only)
};

struct DraftLoss {
  at::Tensor total;      // scalar, differentiable w.r.t. the draft's parameters
  double feature = 0;    // mean over passes
  double token = 0;      // mean over passes
  double top1 = 0;       // first pass: fraction of positions whose argmax matches the target's
  int64_t positions = 0; // answer positions per pass
};

// Loss of one example. `gen` draws the input noise. The draft must be attached to `target`.
DraftLoss draft_loss(VispecDraft& draft, LlamaForCausalLM& target, const DraftExample& ex, const DraftLossOptions& o,
                     at::Generator* gen);

struct DraftTrainOptions {
  TrainerOptions trainer;  // steps, lr, checkpoint_dir (resume), seed, logging
  DraftLossOptions loss;
  int64_t batch = 4;       // examples per step (drawn with the step's generator)
};

// Trains the draft's parameters (the target stays frozen). Resumes from
// trainer.checkpoint_dir when it holds a state. Returns the mean loss of the last step.
double train_draft(LlamaForCausalLM& target, VispecDraft& draft, const std::vector<DraftExample>& data,
                   const DraftTrainOptions& o);

// Mean accepted length τ and cycles of speculative greedy decoding over prompts (text ids).
struct DraftEvaluation {
  double tau = 0;
  int64_t cycles = 0, tokens = 0;
};
DraftEvaluation evaluate_draft(LlamaForCausalLM& target, VispecDraft& draft,
                               const std::vector<std::vector<int64_t>>& prompts, const SpeculativeOptions& opt);

// A prompt as the target's input embeddings (LLaVA: image features spliced in).
struct EmbedsPrompt {
  at::Tensor embeds;      // [1, L, H]
  at::Tensor image_mask;  // [1, L] bool, or undefined
};
// τ over embedding prompts, and the speedup against plain decoding of the same prompts in the
// same process (wall clock of generation, prefill included on both sides).
struct SpeedEvaluation {
  DraftEvaluation draft;
  double speculative_ms = 0, plain_ms = 0;
  int64_t identical = 0, prompts = 0;  // greedy outputs equal to plain decoding's
  double speedup() const { return speculative_ms > 0 ? plain_ms / speculative_ms : 0.0; }
};
SpeedEvaluation evaluate_draft_speed(LlamaForCausalLM& target, VispecDraft& draft,
                                     const std::vector<EmbedsPrompt>& prompts, const SpeculativeOptions& opt);

// "Describe the image." about `count` Tinyworld scenes of a split (seeds from base_seed), as a
// LLaVA model's merged prompts: the long answers speculative decoding is for.
std::vector<EmbedsPrompt> tinyworld_describe_prompts(VqaModel& model, int64_t count, uint64_t base_seed,
                                                     bool held_out);

// prompts.jsonl: one JSON object per line, {"ids": [..]} or {"prompt": "text"} (tokenized with
// `encode`, which may be empty when every line has ids). Blank lines are skipped. FormatError
// naming the file and line.
std::vector<std::vector<int64_t>> read_prompt_file(const std::string& path,
                                                   const std::function<std::vector<int64_t>(const std::string&)>& encode);

}  // namespace iris
