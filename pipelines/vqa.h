#pragma once
// Visual question answering with a LLaVA-1.5 folder: load the model, tokenizer and image
// preprocessor once; then per question preprocess the image (CLIPImageProcessor), render the
// chat template, tokenize (the <image> token spliced in), and generate with the sampler chain,
// streaming text as it comes.
//
// A folder holds config.json, model.safetensors (or a sharded index), tokenizer.model
// (SentencePiece) and optionally preprocessor_config.json (absent: resize the shortest side to
// the tower's image_size and centre-crop to it, CLIP mean/std). config.json may carry
// "chat_template" as a plain string with {question} (not a Jinja template) to replace
// LLaVA-1.5's.
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/image.h"
#include "core/sentencepiece.h"
#include "vlm/chat_template.h"
#include "vlm/faithfulness.h"
#include "vlm/llava.h"
#include "vlm/sampling.h"
#include "vlm/vispec.h"

namespace iris {

struct VqaModel {
  LlavaForConditionalGeneration model{nullptr};
  SentencePieceTokenizer tokenizer;
  ClipPreprocessConfig preprocess;
  ChatTemplate chat;
  std::string folder;

  // Throws IoError / CheckpointError / ConfigError naming the folder and the missing or
  // contradicting file/key. The tokenizer is checked first, before any weight is read.
  static VqaModel load(const std::string& folder);
  // ids -> text, ignoring ids outside the tokenizer's vocabulary (image token, padded rows).
  std::string detokenize(const std::vector<int64_t>& ids) const;
};

struct VqaOptions {
  int64_t max_new_tokens = 256;
  SamplingParams sampling;                // temperature <= 0: greedy
  std::vector<std::string> stop_strings;  // the answer is cut before the first one
  std::string chat_template;              // empty: the model's (LLaVA-1.5 by default)
  // VAR, LocoRE, SGRS (vlm/faithfulness.h): installed on the language model for this answer
  // only. All off: plain decoding (llava_generate), bit for bit what ask() always did.
  FaithfulnessOptions faithfulness;
  // Also compute the answer's image-token saliency map (VqaAnswer::saliency): one teacher-forced
  // saliency probe per answer token, with the faithfulness hooks still installed.
  bool saliency_map = false;
};

struct VqaStats {
  int64_t prompt_tokens = 0;     // merged positions (text tokens + image features)
  int64_t text_tokens = 0;       // tokenized prompt, <image> counted once
  int64_t generated_tokens = 0;
  double prefill_ms = 0;         // vision tower + projector + decoder prefill
  double decode_tokens_per_second = 0;
  StopReason stop = StopReason::MaxTokens;
  // "prompt tokens 79, generated tokens 12, prefill 35.2 ms, decode 45.1 tok/s, stop eos"
  std::string line() const;
};

struct VqaAnswer {
  std::string text;
  std::vector<int64_t> tokens;
  VqaStats stats;
  std::string methods = "baseline";  // FaithfulnessOptions::describe()
  SgrsStats sgrs;                     // when SGRS ran
  int64_t var_rows_changed = 0, var_rows_examined = 0;  // when VAR ran (VarHook's counts)
  // With VqaOptions::saliency_map: [side, side] float, the image patches' saliency for the
  // answer (raw, not normalised; the CLS feature of the "full" strategy left out). Undefined
  // when the answer has no token but EOS.
  at::Tensor saliency;
};

// Called with each piece of new text; return false to stop.
using TextCallback = std::function<bool(const std::string& delta)>;

// The prompt's token ids for a question (template rendered, <image> spliced, BOS first).
std::vector<int64_t> vqa_prompt_ids(const VqaModel& m, const std::string& question, const VqaOptions& opt = {});
// Image -> pixel_values [1, 3, S, S] for the tower.
at::Tensor vqa_pixels(const VqaModel& m, const Image& image);
// The question's prompt as the language model's input embeddings with the image features
// spliced in (what speculative decoding and draft training feed the decoder):
// inputs_embeds [1, L', H], image_mask [1, L'] bool. No autograd.
LlavaMerged vqa_merged_prompt(VqaModel& m, const Image& image, const std::string& question, const VqaOptions& opt = {});
// The same from prompt ids already made by vqa_prompt_ids.
LlavaMerged vqa_merged_prompt(VqaModel& m, const Image& image, const std::vector<int64_t>& ids);
// The merged prompt as ordinary tensors (made under no-grad, not inference mode), as the
// methods that differentiate through the decoder need it (SGRS, saliency maps): inputs_embeds,
// image_mask, attention_mask, position_ids.
LlamaInput vqa_prompt_input(VqaModel& m, const Image& image, const std::vector<int64_t>& ids);

VqaAnswer ask(VqaModel& m, const Image& image, const std::string& question, const VqaOptions& opt = {},
              const TextCallback& on_text = nullptr);
// ask()'s streaming and stats around another decoder (VISOR): `generate` runs the prompt `ids`
// with the options and token callback it is handed (stop strings, detokenizer filled in).
using VqaGenerateFn = std::function<GenerateResult(const GenerateOptions& opt, const TokenCallback& on_token)>;
VqaAnswer ask_with(VqaModel& m, const std::vector<int64_t>& ids, const VqaOptions& opt, const VqaGenerateFn& generate,
                   const TextCallback& on_text = nullptr);
// Decodes the image file first (FormatError / IoError naming it).
VqaAnswer ask(VqaModel& m, const std::string& image_path, const std::string& question, const VqaOptions& opt = {},
              const TextCallback& on_text = nullptr);

// ---- Speculative decoding (ViSpec) -----------------------------------------------------------

struct SpeculativeAskOptions {
  DraftTreeOptions tree;  // DraftTreeOptions::chain(k) for a chain of k drafted tokens
  // Also decode plainly (same prompt) to report the speedup and check equality. Both paths
  // first run a short untimed warm-up: the first call of a process pays one-time costs (kernel
  // selection, allocations, the draft's first pass over the image) that would otherwise all
  // land on whichever path runs first.
  bool compare = false;
};

struct SpeculativeAnswer {
  VqaAnswer answer;
  SpeculativeStats stats;
  bool compared = false, identical = true;
  double speculative_ms = 0, plain_ms = 0;  // generation after the vision tower, wall clock
  // "ViSpec: tau 3.10 accepted draft tokens per cycle, 12 cycles, 13 target forwards; plain
  // decoding 310.2 ms, speculative 120.4 ms: 2.58x, output identical"
  std::string line() const;
};

// ask() with a ViSpec draft (attached to the model's language model here when it is not yet).
// Streams like ask(). ConfigError before any decoding when the draft does not fit the model.
SpeculativeAnswer ask_speculative(VqaModel& m, VispecDraft& draft, const Image& image, const std::string& question,
                                  const VqaOptions& opt, const SpeculativeAskOptions& so,
                                  const TextCallback& on_text = nullptr);

}  // namespace iris
