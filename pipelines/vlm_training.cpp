#include "pipelines/vlm_training.h"

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <optional>

#include <ATen/core/grad_mode.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/linear.h>

#include "core/checkpoint.h"
#include "core/error.h"
#include "core/image.h"
#include "pipelines/random_model.h"
#include "pipelines/trainer.h"
#include "pipelines/vlm_eval.h"
#include "pipelines/vqa.h"
#include "vlm/chat_template.h"
#include "vlm/llava.h"
#include "world/dataset.h"
#include "world/render.h"
#include "world/rng.h"
#include "world/scene.h"

namespace fs = std::filesystem;

namespace iris {

// Default schedules (full size; --tiny: 2 steps each). CPU time per step at the default sizes
// (LLaMA 4 x 256, batch 8 of up to 192 text tokens + 64 image features), one thread, measured
// as user + sys time: augment 0.03 s, text 0.84 s, align 0.85 s, finetune 0.97 s (FtZ: about
// the same). The default schedule is thus about 95 CPU-minutes. The LM learns the language
// fast (text loss ~0.5 after 200 steps of batch 4); grounding answers in the image is what
// takes long, hence the weight on align and finetune.
//   stage     steps  lr     warm-up  batch
//   augment   400    2e-3   40       32 images
//   vision    0      1e-3   50       32 images   (off unless asked; 6000 steps: patch shape
//                                                 read 96 %, vs 58 % from the fine-tune's labels)
//   text      1000   2e-3   100      8 sequences
//   grid      0      1e-3   100      8           (off unless asked)
//   align     1000   2e-3   50       8
//   finetune  4000   1e-3   100      8
namespace {

struct StageDefaults {
  int64_t steps, warmup, batch;
  double lr;
};
constexpr StageDefaults kAugment{400, 40, 32, 2e-3};
constexpr StageDefaults kVision{0, 50, 32, 1e-3};  // off unless asked for
constexpr StageDefaults kText{1000, 100, 0, 2e-3};
constexpr StageDefaults kGrid{0, 100, 0, 1e-3};  // off unless asked for
constexpr StageDefaults kAlign{1000, 50, 0, 2e-3};
constexpr StageDefaults kFinetune{4000, 100, 0, 1e-3};

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

std::string str(int64_t v) { return std::to_string(v); }

std::string trim(const std::string& s) {
  const size_t a = s.find_first_not_of(" \t\r\n");
  if (a == std::string::npos) return "";
  const size_t b = s.find_last_not_of(" \t\r\n");
  return s.substr(a, b - a + 1);
}

std::function<void(const std::string&)> log_of(const VlmTrainOptions& o) {
  if (o.log) return o.log;
  return [](const std::string& line) {
    std::printf("%s\n", line.c_str());
    std::fflush(stdout);
  };
}

void append(VlmSequence& s, const std::vector<int64_t>& ids, bool target) {
  s.ids.insert(s.ids.end(), ids.begin(), ids.end());
  s.target.insert(s.target.end(), ids.size(), target ? 1 : 0);
}

std::vector<int64_t> answer_ids(const VlmVocab& v, const std::string& answer) {
  std::vector<int64_t> a = v.encode(answer);
  a.push_back(v.eos);
  return a;
}

// "USER: {q} ASSISTANT:" of a turn after the first, encoded as a template piece.
std::vector<int64_t> turn_ids(const VlmVocab& v, const std::string& question) {
  return v.encode("USER: " + trim(question) + " ASSISTANT:");
}

// Records, for an image sequence, that the answer about to be appended is read from q.items.
void note_lookup(VlmSequence& s, const world::Question& q) {
  if (s.image_position >= 0 && !q.items.empty())
    s.lookups.push_back({static_cast<int64_t>(s.ids.size()), q.items});
}

// Appends the turns after the first while they fit.
void append_turns(VlmSequence& s, const VlmVocab& v, const std::vector<world::Question>& qs, size_t skip,
                  int64_t max_tokens) {
  for (size_t i = 0; i < qs.size(); ++i) {
    if (i == skip) continue;
    const std::vector<int64_t> t = turn_ids(v, qs[i].question), a = answer_ids(v, qs[i].answer);
    if (static_cast<int64_t>(s.ids.size() + t.size() + a.size()) > max_tokens) continue;
    append(s, t, false);
    note_lookup(s, qs[i]);
    append(s, a, true);
    ++s.turns;
  }
}

}  // namespace

// =============================================================================================
// Sizes, vocabulary, sequences, config

VlmModelSizes VlmModelSizes::resolve(bool tiny) const {
  VlmModelSizes s = *this;
  auto def = [](int64_t& v, int64_t d) {
    if (v <= 0) v = d;
  };
  def(s.hidden, tiny ? 64 : 256);
  def(s.layers, tiny ? 2 : 4);
  def(s.heads, 4);
  def(s.kv_heads, s.heads);
  def(s.intermediate, tiny ? 128 : 704);
  def(s.max_positions, tiny ? 256 : 512);
  def(s.aug_hidden, tiny ? 16 : 64);
  def(s.aug_layers, tiny ? 2 : 4);
  def(s.aug_patch, tiny ? 16 : 8);
  def(s.aug_groups, tiny ? 4 : 8);
  def(s.ftz_heads, 4);
  return s;
}

VlmVocab VlmVocab::load(const std::string& path) {
  if (path.empty()) throw ConfigError("VLM training: no tokenizer given (a SentencePiece tokenizer.model)");
  if (!fs::is_regular_file(path)) throw IoError(path + ": no such tokenizer file (a SentencePiece tokenizer.model)");
  VlmVocab v{SentencePieceTokenizer::load(path)};
  const int64_t pieces = static_cast<int64_t>(v.tokenizer.vocab_size());
  const int user = v.tokenizer.piece_to_id("<image>");
  if (user >= 0 && v.tokenizer.is_user_defined(user)) {
    v.image_token = user;
    v.vocab_size = pieces;
  } else {
    v.image_token = pieces;
    v.vocab_size = pieces + 1;
  }
  v.bos = v.tokenizer.bos_id();
  v.eos = v.tokenizer.eos_id();
  if (v.eos < 0)
    throw ConfigError(path + ": the tokenizer has no EOS control piece (</s>); every answer ends with it");
  return v;
}

std::vector<int64_t> VlmVocab::encode(const std::string& text) const {
  const std::vector<int> ids = tokenizer.encode(text);
  return std::vector<int64_t>(ids.begin(), ids.end());
}

VlmSequence vlm_image_sequence(const VlmVocab& v, const std::vector<world::Question>& qs, int64_t max_tokens,
                               bool isolated) {
  if (qs.empty()) throw ConfigError("VLM training: a sequence needs at least one question");
  const ChatTemplate chat = ChatTemplate::llava15();
  auto first_turn = [&](const world::Question& q) {
    return tokenize_with_images(v.tokenizer, chat.render(q.question), chat.image_placeholder, v.image_token, v.bos);
  };
  if (isolated) {
    // The prefix up to the image, then each question's first-turn text after it, as turns.
    VlmSequence s;
    for (size_t i = 0; i < qs.size(); ++i) {
      const std::vector<int64_t> prompt = first_turn(qs[i]);
      const auto image = std::find(prompt.begin(), prompt.end(), v.image_token);
      if (image == prompt.end()) throw ConfigError("VLM training: the chat template has no image placeholder");
      if (s.ids.empty()) {
        append(s, std::vector<int64_t>(prompt.begin(), image + 1), false);
        s.image_position = static_cast<int64_t>(image - prompt.begin());
        s.turn_of.assign(s.ids.size(), 0);
      }
      const std::vector<int64_t> text(image + 1, prompt.end());
      std::vector<int64_t> a = answer_ids(v, qs[i].answer);
      const int64_t room = max_tokens - static_cast<int64_t>(s.ids.size() + text.size());
      if (static_cast<int64_t>(a.size()) > room) {
        if (s.turns > 0) continue;  // a later question may fit
        if (room < 1)
          throw ConfigError("VLM training: max_text_tokens " + str(max_tokens) + " leaves no room for an answer after the " +
                            str(static_cast<int64_t>(prompt.size())) + "-token prompt of \"" + qs[i].question + "\"");
        a.resize(static_cast<size_t>(room));
      }
      ++s.turns;
      append(s, text, false);
      note_lookup(s, qs[i]);
      append(s, a, true);
      s.turn_of.resize(s.ids.size(), static_cast<int32_t>(s.turns));
    }
    return s;
  }
  // The first question whose whole turn fits leads (else the first, its answer cut).
  size_t lead = 0;
  for (size_t i = 0; i < qs.size(); ++i)
    if (static_cast<int64_t>(first_turn(qs[i]).size() + answer_ids(v, qs[i].answer).size()) <= max_tokens) {
      lead = i;
      break;
    }
  VlmSequence s;
  append(s, first_turn(qs[lead]), false);
  s.image_position = std::find(s.ids.begin(), s.ids.end(), v.image_token) - s.ids.begin();
  std::vector<int64_t> a = answer_ids(v, qs[lead].answer);
  const int64_t room = max_tokens - static_cast<int64_t>(s.ids.size());
  if (room < 1)
    throw ConfigError("VLM training: max_text_tokens " + str(max_tokens) + " leaves no room for an answer after the " +
                      str(static_cast<int64_t>(s.ids.size())) + "-token prompt of \"" + qs[lead].question + "\"");
  if (static_cast<int64_t>(a.size()) > room) a.resize(static_cast<size_t>(room));
  note_lookup(s, qs[lead]);
  append(s, a, true);
  s.turns = 1;
  append_turns(s, v, qs, lead, max_tokens);
  return s;
}

VlmSequence vlm_text_sequence(const VlmVocab& v, const std::string& context, const std::vector<world::Question>& qs,
                              int64_t max_tokens) {
  if (qs.empty()) throw ConfigError("VLM training: a sequence needs at least one question");
  const ChatTemplate chat = ChatTemplate::llava15();
  // The first turn tokenized as the image prompt, the context's tokens where <image> is.
  const std::vector<int64_t> prompt =
      tokenize_with_images(v.tokenizer, chat.render(qs[0].question), chat.image_placeholder, v.image_token, v.bos);
  VlmSequence s;
  for (int64_t id : prompt) {
    if (id == v.image_token) append(s, v.encode(context), true);
    else append(s, {id}, true);
  }
  append(s, answer_ids(v, qs[0].answer), true);
  s.turns = 1;
  if (static_cast<int64_t>(s.ids.size()) > max_tokens) {
    s.ids.resize(static_cast<size_t>(max_tokens));
    s.target.resize(static_cast<size_t>(max_tokens));
  } else {
    append_turns(s, v, qs, 0, max_tokens);
  }
  std::fill(s.target.begin(), s.target.end(), 1);  // language modelling: every token
  s.target[0] = 0;                                 // (nothing predicts the first)
  return s;
}

Json vlm_llava_config(const Json& vision_config, const VlmModelSizes& sizes, const VlmVocab& vocab, bool ftz) {
  LlamaConfig t;
  t.vocab_size = vocab.vocab_size;
  t.hidden_size = sizes.hidden;
  t.intermediate_size = sizes.intermediate;
  t.num_hidden_layers = sizes.layers;
  t.num_attention_heads = sizes.heads;
  t.num_key_value_heads = sizes.kv_heads;
  if (sizes.heads <= 0 || sizes.hidden % sizes.heads != 0)
    throw ConfigError("VLM sizes: heads " + str(sizes.heads) + " must divide hidden " + str(sizes.hidden));
  t.head_dim = sizes.hidden / sizes.heads;
  t.max_position_embeddings = sizes.max_positions;
  t.rms_norm_eps = 1e-5;
  t.tie_word_embeddings = sizes.tie_embeddings;
  t.bos_token_id = vocab.bos;
  t.eos_token_ids = {vocab.eos};
  Json vc = vision_config;
  vc.erase("architectures");
  vc["model_type"] = "clip_vision_model";
  Json j = {{"architectures", {"LlavaForConditionalGeneration"}},
            {"model_type", "llava"},
            {"image_token_index", vocab.image_token},
            {"projector_hidden_act", "gelu"},
            {"vision_feature_layer", sizes.feature_layer},
            {"vision_feature_select_strategy", "default"},
            {"ignore_index", -100},
            {"tie_word_embeddings", sizes.tie_embeddings},
            {"vision_config", vc},
            {"text_config", t.to_json()}};
  if (sizes.image_position) j["image_position_embedding"] = true;
  if (ftz) {
    const ClipVisionConfig v = ClipVisionConfig::from_json(vc, "vision_config");
    const int64_t depth = clip_layers_for_hidden_state(sizes.feature_layer, v.num_hidden_layers, "vision_feature_layer");
    const int64_t a = sizes.aug_layers;
    // Fuse at the feature layer (deepest augmenting state) and one layer before (mid depth).
    Json pairs = depth == 0 ? Json::array({Json::array({0, a})})
                            : Json::array({Json::array({depth - 1, a / 2}), Json::array({depth, a})});
    j["ftz"] = {{"augmenting_encoder",
                 {{"model_type", "conv"}, {"num_channels", v.num_channels}, {"image_size", v.image_size},
                  {"patch_size", sizes.aug_patch}, {"hidden_size", sizes.aug_hidden}, {"num_layers", a},
                  {"norm_groups", sizes.aug_groups}, {"position_embedding", sizes.aug_position}}},
                {"pairs", pairs},
                {"heads", sizes.ftz_heads}};
  }
  LlavaConfig::from_json(j, "VLM config");  // validates everything now, naming the key
  return j;
}

// =============================================================================================
// Data

namespace {

// Training-split scenes: drawn fresh from a generator, or from a fixed pool of `scenes`.
class SceneSource {
 public:
  SceneSource(uint64_t seed, int64_t pool) : base_(world::hash_combine(seed, 0x5ce4e5ull)) {
    if (pool > 0) {
      world::DatasetOptions d;
      d.base_seed = base_;
      d.count = static_cast<int>(pool);
      d.split = world::Split::Train;
      pool_ = world::split_seeds(d);
    }
  }
  world::Scene draw(world::Rng& rng) const {
    if (!pool_.empty()) return world::sample_scene(pool_[static_cast<size_t>(rng.below(pool_.size()))]);
    for (;;) {
      const uint64_t seed = world::sample_seed(base_, rng.next());
      if (world::seed_held_out(seed)) continue;
      world::Scene s = world::sample_scene(seed);
      if (world::scene_split(s) == world::Split::Train) return s;
    }
  }

 private:
  uint64_t base_;
  std::vector<uint64_t> pool_;
};

// pixel_values [3, S, S] of a render, preprocessed as VqaModel does.
at::Tensor scene_pixels(const world::Scene& scene, const ClipPreprocessConfig& pre) {
  int h = 0, w = 0;
  std::vector<float> chw = clip_preprocess(world::render_scene(scene), pre, &h, &w);
  return at::from_blob(chw.data(), {3, h, w}, at::kFloat).clone();
}

// A padded batch: ids [B, L] (the <image> token as 0, padding EOS), and the loss rows: flat
// indices into the merged [B, L'] positions whose hidden states predict labels [N].
struct Batch {
  at::Tensor ids, rows, labels;
  at::Tensor pixels;            // [B, 3, S, S] or undefined
  int64_t image_position = -1;  // shared by every row
  int64_t tokens = 0;           // merged positions in the batch (B * L')
  // The sequences' lookups (VlmSequence::lookups): flat merged position predicting each
  // answer's first token [M], its sequence, and the items the answer is read from.
  at::Tensor lookup_rows;
  at::Tensor visible;  // [B, L', L'] bool with isolated turns (LlamaInput::tree_mask), else undefined
  std::vector<int64_t> lookup_sequence;
  std::vector<std::vector<int>> lookup_items;
};

Batch collate(const std::vector<VlmSequence>& seqs, const VlmVocab& v, int64_t image_features) {
  const int64_t B = static_cast<int64_t>(seqs.size());
  int64_t L = 0;
  for (const VlmSequence& s : seqs) L = std::max<int64_t>(L, static_cast<int64_t>(s.ids.size()));
  Batch b;
  b.image_position = seqs.front().image_position;
  const int64_t extra = b.image_position >= 0 ? image_features - 1 : 0;
  const int64_t merged = L + extra;
  // Text position j -> merged position: the image's features take extra more slots, and the
  // token after the image is predicted from the last feature.
  auto merged_position = [&](int64_t j) { return (b.image_position >= 0 && j >= b.image_position) ? j + extra : j; };
  b.ids = at::full({B, L}, v.eos, at::kLong);
  auto ids = b.ids.accessor<int64_t, 2>();
  std::vector<int64_t> rows, labels;
  for (int64_t r = 0; r < B; ++r) {
    const VlmSequence& s = seqs[static_cast<size_t>(r)];
    if (s.image_position != b.image_position)
      throw ShapeError("VLM training: sequences of a batch must put the image at the same position");
    for (size_t k = 0; k < s.ids.size(); ++k) {
      ids[r][static_cast<int64_t>(k)] = static_cast<int64_t>(k) == s.image_position ? 0 : s.ids[k];
      if (k == 0 || !s.target[k]) continue;
      // Token k is predicted at text position k - 1, merged position m(k - 1).
      rows.push_back(r * merged + merged_position(static_cast<int64_t>(k) - 1));
      labels.push_back(s.ids[k]);
    }
  }
  // Isolated turns: who sees whom on the merged positions (image features are prefix).
  if (!seqs.front().turn_of.empty()) {
    b.visible = at::zeros({B, merged, merged}, at::kBool);
    auto vis = b.visible.accessor<bool, 3>();
    for (int64_t r = 0; r < B; ++r) {
      const VlmSequence& s = seqs[static_cast<size_t>(r)];
      if (s.turn_of.size() != s.ids.size())
        throw ShapeError("VLM training: sequences of a batch must all isolate their turns or none");
      std::vector<int32_t> turn(static_cast<size_t>(merged), -1);  // -1: padding
      for (size_t k = 0; k < s.ids.size(); ++k) {
        const int64_t m = (b.image_position >= 0 && static_cast<int64_t>(k) > b.image_position) ? k + extra : k;
        turn[static_cast<size_t>(m)] = s.turn_of[k];
      }
      for (int64_t e = 0; e < extra; ++e) turn[static_cast<size_t>(b.image_position + 1 + e)] = 0;
      for (int64_t i = 0; i < merged; ++i) {
        const int32_t ti = turn[static_cast<size_t>(i)];
        vis[r][i][i] = true;
        if (ti < 0) continue;
        for (int64_t j = 0; j < i; ++j) {
          const int32_t tj = turn[static_cast<size_t>(j)];
          vis[r][i][j] = tj == 0 || tj == ti;
        }
      }
    }
  }
  std::vector<int64_t> lookup_rows;
  for (int64_t r = 0; r < B; ++r)
    for (const VlmSequence::Lookup& k : seqs[static_cast<size_t>(r)].lookups) {
      lookup_rows.push_back(r * merged + merged_position(k.answer_start - 1));  // predicts the answer's first token
      b.lookup_sequence.push_back(r);
      b.lookup_items.push_back(k.items);
    }
  b.lookup_rows = at::tensor(lookup_rows, at::kLong);
  if (rows.empty()) throw ConfigError("VLM training: a batch without any loss target");
  b.rows = at::tensor(rows, at::kLong);
  b.labels = at::tensor(labels, at::kLong);
  b.tokens = B * merged;
  return b;
}

// The LM's logits [N, V] (float) at the batch's target rows. features [B, T, H] replace the
// <image> token (undefined for text batches).
at::Tensor target_logits(LlavaForConditionalGeneration& model, const Batch& b, const at::Tensor& features,
                         const AttentionHookList* hooks = nullptr) {
  LlamaForCausalLM& lm = model->language_model;
  at::Tensor x = lm->model->embed(b.ids);  // [B, L, H]
  if (features.defined()) {
    const int64_t p = b.image_position, L = x.size(1);
    x = at::cat({x.narrow(1, 0, p), features.to(x.scalar_type()), x.narrow(1, p + 1, L - p - 1)}, 1);  // [B, L', H]
  }
  LlamaInput in;
  in.inputs_embeds = x;
  in.tree_mask = b.visible;  // isolated turns: each turn's positions follow the prefix, as a first turn's
  LlamaForwardOptions fo;
  fo.logits = LogitsMode::None;
  fo.hooks = hooks;
  const at::Tensor h = lm->forward(in, nullptr, fo).last_hidden_state;            // [B, L', H]
  const at::Tensor picked = h.reshape({-1, h.size(2)}).index_select(0, b.rows);  // [N, H]
  return lm->logits(picked).to(at::kFloat);
}

// Cross-entropy of the batch's targets; `right`, when given, counts the targets whose argmax
// is the label.
at::Tensor lm_loss(LlavaForConditionalGeneration& model, const Batch& b, const at::Tensor& features,
                   int64_t* right = nullptr, const AttentionHookList* hooks = nullptr) {
  const at::Tensor logits = target_logits(model, b, features, hooks);  // [N, V]
  if (right) {
    at::NoGradGuard no_grad;
    *right += logits.argmax(1).eq(b.labels).sum().item<int64_t>();
  }
  return at::cross_entropy_loss(logits, b.labels);
}

// [B, 3, S, S] -> [B, (S/P)^2, 3 P P]: each patch's pixels, the decoder head's target.
at::Tensor patchify(const at::Tensor& px, int64_t p) {
  const int64_t B = px.size(0), C = px.size(1), g = px.size(2) / p;
  return px.view({B, C, g, p, g, p}).permute({0, 2, 4, 1, 3, 5}).reshape({B, g * g, C * p * p});
}

std::string decode_for_log(const VlmVocab& v, const std::vector<int64_t>& ids) {
  std::string out;
  std::vector<int> run;
  auto flush = [&] {
    if (!run.empty()) out += v.tokenizer.decode(run);
    run.clear();
  };
  for (int64_t id : ids) {
    if (id == v.image_token) {
      flush();
      out += "<image>";
    } else if (id == v.eos) {
      flush();
      out += "</s>";
    } else if (id >= 0 && id < static_cast<int64_t>(v.tokenizer.vocab_size())) {
      run.push_back(static_cast<int>(id));
    }
  }
  flush();
  std::replace(out.begin(), out.end(), '\n', '|');
  return out;
}

}  // namespace

std::vector<float> lookup_patch_row(const std::vector<int>& owners, const std::vector<int>& items) {
  std::vector<float> row;
  bool any = false;
  for (const int who : owners) {
    const bool on = std::find(items.begin(), items.end(), who) != items.end();
    row.push_back(on ? 1.f : 0.f);
    any = any || on;
  }
  if (!any) row.clear();
  return row;
}

namespace {

// Keeps head 0's post-softmax weights of one decoder layer, [B, L', L'], with their autograd
// history (VlmTrainOptions::lookup_weight).
class HeadRecorder : public AttentionHook {
 public:
  explicit HeadRecorder(int layer) : layer_(layer) {}
  bool wants(int layer, const HookContext&) const override { return layer == layer_; }
  void on_weights(int, at::Tensor& w, const HookContext&) override { weights = w.select(1, 0); }
  at::Tensor weights;

 private:
  int layer_;
};

// The lookup loss's targets for a batch of image sequences: the rows kept (lookups whose items
// own at least one patch) [M] and, per row, which of the T = grid^2 image tokens show the
// items [M, T] (1 / 0).
struct LookupTargets {
  at::Tensor rows, mask;
};

LookupTargets lookup_targets(const Batch& b, const std::vector<world::Scene>& scenes, int64_t grid) {
  std::vector<std::vector<int>> owners(scenes.size());
  std::vector<int64_t> rows;
  std::vector<float> mask;
  const auto all_rows = b.lookup_rows.accessor<int64_t, 1>();
  for (size_t m = 0; m < b.lookup_items.size(); ++m) {
    const auto r = static_cast<size_t>(b.lookup_sequence[m]);
    if (owners[r].empty()) owners[r] = patch_owners(scenes[r], grid);
    const std::vector<float> row = lookup_patch_row(owners[r], b.lookup_items[m]);
    if (row.empty()) continue;
    rows.push_back(all_rows[static_cast<int64_t>(m)]);
    mask.insert(mask.end(), row.begin(), row.end());
  }
  LookupTargets t;
  t.rows = at::tensor(rows, at::kLong);
  t.mask = at::tensor(mask, at::kFloat).view({static_cast<int64_t>(rows.size()), grid * grid});
  return t;
}

// -log(the recorded head's weight on the answer's patches), averaged over the rows; `mass`
// gets the mean weight itself. weights: [B, L', L'], the image tokens at b.image_position.
at::Tensor lookup_loss(const at::Tensor& weights, const Batch& b, const LookupTargets& t, double* mass) {
  const int64_t T = t.mask.size(1);
  const at::Tensor w = weights.reshape({-1, weights.size(2)}).index_select(0, t.rows).narrow(1, b.image_position, T);
  const at::Tensor on = (w.to(at::kFloat) * t.mask).sum(1);  // [M]
  if (mass) *mass = on.mean().item<double>();
  return -on.clamp_min(1e-6).log().mean();
}

// The symbolic image of a scene (the grid stage's stand-in for the image features): per patch
// of the grid, the sum of the LM's embeddings of the words naming the patch labels
// (patch_label_targets with scene labels: colour, shape and size of the covering item; style
// and background everywhere; a multi-piece word is its pieces' mean; the stick figure is
// "stick" + "figure"; a background patch names no item) plus a learned position vector per
// patch. Computed from the live embedding table, so the LM's words and the grid stay one
// vocabulary while the LM trains.
struct SymbolicImage {
  // own_table: a learned vector per label class (random start) instead of the word embeddings.
  SymbolicImage(const VlmVocab& v, int64_t grid, int64_t hidden, uint64_t seed, bool own_table = false) : grid(grid) {
    const int64_t V = v.vocab_size;
    // One bag-of-pieces matrix per label: row = class, with an all-zero row last for the
    // classes that name nothing (the figure's size, -100).
    auto bag = [&](const std::vector<std::string>& words) {
      at::Tensor m = at::zeros({static_cast<int64_t>(words.size()) + 1, V});
      for (size_t c = 0; c < words.size(); ++c) {
        if (words[c].empty()) continue;
        const std::vector<int64_t> ids = v.encode(words[c]);
        for (int64_t id : ids) m[static_cast<int64_t>(c)][id] += 1.0 / static_cast<double>(ids.size());
      }
      return m;
    };
    std::vector<std::string> colors{""}, shapes{""}, sizes{""}, styles, backgrounds;
    for (world::Color c : world::all_colors()) colors.push_back(world::name(c));
    for (world::Shape c : world::all_shapes()) shapes.push_back(world::name(c));
    for (world::Size c : world::all_sizes()) sizes.push_back(world::name(c));
    for (world::Style c : world::all_styles()) styles.push_back(world::name(c));
    for (world::Background c : world::all_backgrounds()) backgrounds.push_back(world::name(c));
    colors.push_back("stick");
    shapes.push_back("figure");
    bags = {bag(colors), bag(shapes), bag(sizes), bag(styles), bag(backgrounds)};
    position = at::empty({grid * grid, hidden});
    at::Generator gen = at::detail::createCPUGenerator(seed);
    position.normal_(0.0, 0.02, gen);
    position.set_requires_grad(true);
    if (own_table) {
      int64_t rows = 0;
      for (const at::Tensor& b : bags) rows += b.size(0);
      table = at::empty({rows, hidden});
      table.normal_(0.0, 0.02, gen);
      table.set_requires_grad(true);
    }
  }
  // scenes -> [B, grid^2, H] in the embedding table's dtype.
  at::Tensor operator()(const std::vector<world::Scene>& scenes, const at::Tensor& embedding) const {
    const std::vector<at::Tensor> labels = patch_label_targets(scenes, grid, /*scene_labels=*/true);
    const at::Tensor words_table = embedding.to(at::kFloat);  // [V, H]
    at::Tensor x;
    int64_t offset = 0;
    for (size_t i = 0; i < bags.size(); ++i) {
      const int64_t rows = bags[i].size(0), none = rows - 1;
      const at::Tensor idx = at::where(labels[i] < 0, at::full_like(labels[i], none), labels[i]);  // [B * N]
      at::Tensor classes = table.defined() ? table.narrow(0, offset, rows) : at::matmul(bags[i], words_table);
      if (table.defined()) classes = classes * (at::arange(rows) < none).unsqueeze(1);  // "none" names nothing
      const at::Tensor words = classes.index_select(0, idx);  // [B * N, H]
      x = x.defined() ? x + words : words;
      offset += rows;
    }
    const int64_t B = static_cast<int64_t>(scenes.size());
    return (x.view({B, grid * grid, -1}) + position).to(embedding.scalar_type());
  }
  int64_t grid;
  std::vector<at::Tensor> bags;  // [classes + 1, V] each: colour, shape, size, style, background
  at::Tensor position;           // [grid^2, H], trained in the grid stage
  at::Tensor table;              // own_table: [sum of rows, H], trained in the grid stage; else undefined
};

// Relative squared error of projected image tokens against their symbolic image (the target
// is not moved: the LM is frozen when align uses it).
at::Tensor symbolic_regression(const at::Tensor& projected, const at::Tensor& symbolic) {
  const at::Tensor target = symbolic.detach().to(at::kFloat);
  return (projected.to(at::kFloat) - target).pow(2).mean() / target.pow(2).mean().clamp_min(1e-12);
}

// Teacher-forced answers of a batch, in row order: an answer (its tokens up to and including
// EOS) is right when every token is the argmax.
std::vector<bool> answers_right(LlavaForConditionalGeneration& model, const Batch& b, const at::Tensor& features,
                                int64_t eos) {
  const at::Tensor hit = target_logits(model, b, features).argmax(1).eq(b.labels);
  const auto ok = hit.accessor<bool, 1>();
  const auto label = b.labels.accessor<int64_t, 1>();
  std::vector<bool> out;
  bool all = true;
  for (int64_t i = 0; i < b.labels.size(0); ++i) {
    all = all && ok[i];
    if (label[i] != eos) continue;
    out.push_back(all);
    all = true;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Stages

struct ResolvedStage {
  std::string name;
  int64_t steps, warmup, batch;
  double lr;
};

ResolvedStage resolve_stage(const std::string& name, const VlmStageSchedule& s, const StageDefaults& d,
                            const VlmTrainOptions& o) {
  ResolvedStage r;
  r.name = name;
  r.steps = s.steps >= 0 ? s.steps : (o.tiny ? std::min<int64_t>(2, d.steps) : d.steps);
  r.lr = s.lr > 0 ? s.lr : d.lr;
  r.warmup = std::min(s.warmup >= 0 ? s.warmup : (o.tiny ? 0 : d.warmup), r.steps / 2);
  const int64_t run_batch = o.batch > 0 ? o.batch : (o.tiny ? 2 : 8);
  r.batch = s.batch > 0 ? s.batch : (d.batch > 0 ? (o.tiny ? 4 : d.batch) : run_batch);
  return r;
}

// Runs (or resumes, or skips when done) one stage over `params`. loss_fn(data_seed) -> scalar.
VlmStageReport run_stage(const ResolvedStage& st, uint64_t stage_seed, const NamedTensors& params,
                         const VlmTrainOptions& o, double ema,
                         const std::function<at::Tensor(uint64_t data_seed)>& loss_fn) {
  const auto log = log_of(o);
  VlmStageReport r;
  r.name = st.name;
  if (st.steps == 0) {
    r.skipped = true;
    log("[" + st.name + "] skipped (0 steps)");
    return r;
  }
  TrainerOptions t;
  t.name = st.name;
  t.steps = st.steps;
  t.lr = st.lr;
  t.warmup_steps = st.warmup;
  t.seed = stage_seed;
  t.ema_decay = ema;
  t.log_every = o.log_every;
  t.checkpoint_every = o.checkpoint_every;
  t.checkpoint_dir = o.work_dir.empty() ? "" : (fs::path(o.work_dir) / st.name).string();
  t.log = log;
  t.progress = o.progress;
  Trainer trainer(params, t);
  trainer.resume();
  r.start_step = trainer.current_step();
  if (trainer.done()) {
    r.skipped = true;
    r.final_step = trainer.current_step();
    log("[" + st.name + "] already done (" + str(r.final_step) + " steps in " + t.checkpoint_dir + "): skipped");
  } else {
    int64_t params_count = 0;
    for (const auto& [n, p] : params) params_count += p.numel();
    log("[" + st.name + "] " + str(params_count) + " trained parameters, " + str(st.steps) + " steps, lr " +
        std::to_string(st.lr) + ", batch " + str(st.batch));
    const uint64_t fixed_seed = world::hash_combine(stage_seed, 0xf12edull);
    const auto t0 = Clock::now();
    trainer.run([&](int64_t, at::Generator&) {
      at::Tensor loss = loss_fn(o.fixed_batch ? fixed_seed : trainer.step_seed());
      r.losses.push_back(loss.item<double>());
      return loss;
    });
    r.final_step = trainer.current_step();
    if (r.final_step > r.start_step)
      r.seconds_per_step = seconds_since(t0) / static_cast<double>(r.final_step - r.start_step);
    char buf[160];
    std::snprintf(buf, sizeof buf, "[%s] finished: %.3f s/step, loss %.4f -> %.4f", st.name.c_str(), r.seconds_per_step,
                  r.losses.front(), r.losses.back());
    log(buf);
  }
  if (ema > 0) trainer.swap_ema();  // the model carries the EMA weights from here on
  return r;
}

void set_trainable(torch::nn::Module& m, bool on) {
  for (auto& p : m.parameters(true)) p.set_requires_grad(on);
}

// The run's settings that a work folder's checkpoints depend on.
Json run_fingerprint(const Json& config, const VlmTrainOptions& o, const ResolvedStage& text, const ResolvedStage& vision,
                     const ResolvedStage& vision_stage, const ResolvedStage& grid_stage) {
  // The image position embedding is its own key (below), so that it may join a folder whose
  // projector has not trained yet.
  Json model_config = config;
  model_config.erase("image_position_embedding");
  Json fp = {{"config", model_config},
             {"seed", o.seed},
             {"max_text_tokens", o.max_text_tokens},
             {"scenes", o.scenes},
             {"describe_probability", o.describe_probability},
             {"train_vision", o.train_vision},
             {"augment_labels", o.augment_labels},
             {"finetune_labels", o.finetune_labels},
             {"finetune_ema", o.finetune_ema},
             {"text_batch", text.batch},
             {"batch", vision.batch},
             {"fixed_batch", o.fixed_batch}};
  // Recorded only when on, so work folders made before the option still resume.
  if (o.balance_existence) fp["balance_existence"] = true;
  if (o.relation_drill) fp["relation_drill"] = true;
  if (vision_stage.steps > 0) fp["vision_batch"] = vision_stage.batch;
  if (o.scene_labels) fp["scene_labels"] = true;  // steps, like the other stages', may grow
  if (grid_stage.steps > 0) {
    fp["grid"] = {{"batch", grid_stage.batch}, {"align_grid", o.align_grid}};
    if (o.grid_own_table) fp["grid"]["own_table"] = true;
  }
  if (o.lookup_weight > 0) fp["lookup"] = {{"weight", o.lookup_weight}, {"layer", o.lookup_layer}};
  if (o.isolated_turns) fp["isolated_turns"] = true;
  if (o.paraphrase > 0) fp["paraphrase"] = o.paraphrase;
  if (o.finetune_text_share > 0) fp["finetune_text_share"] = o.finetune_text_share;
  if (config.value("image_position_embedding", false)) fp["image_position"] = true;
  if (!o.init_dir.empty()) fp["init"] = {{"dir", o.init_dir}, {"encoder_over_init", o.encoder_over_init}};
  return fp;
}

// A stage's key may join a work folder made without it (a grid stage added to a run whose
// vision stage ran alone first) while neither that stage nor any after it has started there:
// nothing trained so far depends on it.
void check_work_dir(const std::string& work, const Json& fingerprint) {
  if (work.empty()) return;
  const fs::path path = fs::path(work) / "vlm_run.json";
  if (fs::exists(path)) {
    Json old = read_json_file(path.string());
    static const std::map<std::string, std::vector<std::string>> joins_before = {
        {"grid", {"grid", "align", "finetune"}}, {"lookup", {"grid", "align", "finetune"}},
        {"isolated_turns", {"grid", "align", "finetune"}}, {"image_position", {"align", "finetune"}},
        // Data mixes that a warm restart of the fine-tune may take up (they change what is
        // learned from then on, not the shapes of what was saved).
        {"paraphrase", {}}, {"finetune_text_share", {}}, {"relation_drill", {}}};
    bool joined = false;
    for (const auto& [key, value] : fingerprint.items()) {
      if (!old.contains(key) && joins_before.count(key)) {
        const auto& later = joins_before.at(key);
        if (std::none_of(later.begin(), later.end(), [&](const std::string& st) { return fs::exists(fs::path(work) / st); })) {
          old[key] = value;
          joined = true;
          continue;
        }
      }
      if (!old.contains(key) || old[key] != value)
        throw ConfigError(path.string() + ": this work folder was made with another \"" + key +
                          "\" (model sizes, tokenizer, encoder or data options); use another --work or the same options");
    }
    if (joined) write_json(path.string(), old);
    return;
  }
  write_json(path.string(), fingerprint);
}

// The first key path where two configs differ ("" when equal).
std::string first_difference(const Json& a, const Json& b, const std::string& path = "") {
  if (a.is_object() && b.is_object()) {
    for (const auto& [k, v] : a.items()) {
      const std::string at = path.empty() ? k : path + "." + k;
      if (!b.contains(k)) return at;
      if (std::string d = first_difference(v, b[k], at); !d.empty()) return d;
    }
    for (const auto& [k, v] : b.items())
      if (!a.contains(k)) return path.empty() ? k : path + "." + k;
    return "";
  }
  return a == b ? "" : (path.empty() ? "(top level)" : path);
}

// VlmTrainOptions::init_dir: the model's weights from a trained LLaVA folder whose config is the
// one this run builds (a folder trained with other sizes, tokenizer or encoder would load into
// the wrong shapes, or silently into another tokenizer's ids).
// Checked before the work folder records the run, so that a wrong --init leaves nothing behind.
// Returns the folder's weights part.
ModelPart init_part(const Json& config, const VlmTrainOptions& o) {
  if (!fs::is_directory(o.init_dir)) throw IoError(o.init_dir + ": no such LLaVA folder (--init)");
  const Checkpoint ck = Checkpoint::open(o.init_dir);
  const ModelPart* part = nullptr;
  for (const ModelPart& p : ck.parts())
    if (p.has_weights()) part = &p;
  if (!part || part->config.is_null())
    throw CheckpointError(o.init_dir + ": expected a LLaVA folder with config.json and safetensors weights (--init)");
  if (part->config.contains("visor") && !part->config["visor"].is_null())
    throw ConfigError(o.init_dir + ": a VISOR folder; --init takes the LLaVA folder it was made from");
  if (const std::string d = first_difference(config, part->config); !d.empty()) {
    const auto show = [&](const Json& j) {
      const Json* x = &j;
      std::string rest = d;
      while (x && !rest.empty()) {
        const std::string key = rest.substr(0, rest.find('.'));
        rest = rest.find('.') == std::string::npos ? "" : rest.substr(rest.find('.') + 1);
        x = x->is_object() && x->contains(key) ? &(*x)[key] : nullptr;
      }
      return x ? x->dump() : std::string("(absent)");
    };
    throw ConfigError(part->config_path + ": \"" + d + "\" is " + show(part->config) + ", this run builds " + show(config) +
                      " (--init needs the same encoder config, tokenizer, model sizes and options the folder was trained with)");
  }
  return *part;
}

void init_from_folder(LlavaForConditionalGeneration& model, const Json& config, const VlmTrainOptions& o) {
  const ModelPart part = init_part(config, o);
  std::vector<std::pair<std::string, at::Tensor>> tower;
  if (o.encoder_over_init)  // keep the encoder's tower: copied out, restored after the folder's load
    for (const auto& item : model->vision_tower->named_parameters(true))
      tower.emplace_back(item.key(), item.value().detach().clone());
  const LoadReport r = load_llava_weights(model, *part.weights);
  if (!r.ok()) throw CheckpointError(o.init_dir + ": does not load into the model this run builds: " + r.summary());
  if (o.encoder_over_init) {
    at::NoGradGuard no_grad;
    auto params = model->vision_tower->named_parameters(true);
    for (const auto& [n, p] : tower) params[n].copy_(p);
  }
}

void write_output(const VlmTrainOptions& o, LlavaForConditionalGeneration& model, const Json& config,
                  const VlmVocab& vocab, const std::string& preprocessor_path) {
  const fs::path out(o.out_dir);
  fs::create_directories(out);
  write_json((out / "config.json").string(), config);
  write_weights((out / "model.safetensors").string(), *model, o.f16);
  const fs::path tok = out / "tokenizer.model";
  std::error_code ec;
  if (!fs::equivalent(o.tokenizer_path, tok, ec)) fs::copy_file(o.tokenizer_path, tok, fs::copy_options::overwrite_existing);
  const int64_t size = model->config().vision.image_size;
  if (fs::is_regular_file(preprocessor_path)) {
    write_json((out / "preprocessor_config.json").string(), read_json_file(preprocessor_path));
  } else {
    write_json((out / "preprocessor_config.json").string(),
               {{"image_processor_type", "CLIPImageProcessor"}, {"size", {{"shortest_edge", size}}},
                {"crop_size", {{"height", size}, {"width", size}}}, {"do_resize", true}, {"do_center_crop", true},
                {"resample", 3}});
  }
  write_json((out / "generation_config.json").string(),
             {{"bos_token_id", vocab.bos}, {"eos_token_id", vocab.eos}, {"do_sample", false}, {"max_new_tokens", 128}});
}

}  // namespace

std::vector<world::Question> vlm_training_questions(const world::Scene& scene, world::Rng& rng, double describe_p,
                                                   bool balance_existence, bool relation_drill) {
  world::QuestionOptions qo;
  qo.split = world::Split::Train;
  if (relation_drill) qo.relations = {2, 0.5, true};
  std::vector<world::Question> qs = world::make_questions(scene, rng, qo);
  const bool describe = rng.chance(describe_p);
  qs.erase(std::remove_if(qs.begin(), qs.end(), [&](const world::Question& q) { return q.kind == "describe" && !describe; }),
           qs.end());
  if (balance_existence) world::balance_existence_probes(qs, rng);
  rng.shuffle(qs);
  return qs;
}

// =============================================================================================
// The run

VlmTrainReport train_vlm(const VlmTrainOptions& o_in) {
  VlmTrainOptions o = o_in;
  const auto log = log_of(o);
  if (o.out_dir.empty()) throw ConfigError("VLM training: no output folder given");
  if (o.max_text_tokens <= 0) o.max_text_tokens = o.tiny ? 64 : 192;
  if (o.describe_probability < 0 || o.describe_probability > 1)
    throw ConfigError("VLM training: describe_probability must be in [0, 1]");
  if (o.scene_labels && o.vision.steps <= 0 && o.finetune_labels <= 0)
    throw ConfigError("VLM training: scene_labels (style and background per patch) need the vision stage "
                      "(vision steps > 0) or finetune_labels > 0 to train them");
  if (o.encoder_over_init && o.init_dir.empty())
    throw ConfigError("VLM training: --encoder-over-init replaces the vision tower of an --init folder; no --init given");
  if (!o.init_dir.empty()) {
    // A trained model: the stages that build one from scratch run only when asked for.
    for (VlmStageSchedule* s : {&o.augment, &o.vision, &o.text, &o.grid, &o.align})
      if (s->steps < 0) s->steps = 0;
  }
  if (o.finetune_labels < 0 || (o.finetune_labels > 0 && !o.train_vision))
    throw ConfigError("VLM training: finetune_labels (" + std::to_string(o.finetune_labels) +
                      ") must be >= 0, and > 0 only with train_vision (frozen features cannot learn them)");

  // Inputs first: a missing encoder or tokenizer fails before any work.
  if (o.encoder_dir.empty()) throw ConfigError("VLM training: no vision encoder folder given");
  if (!fs::is_directory(o.encoder_dir))
    throw IoError(o.encoder_dir + ": no such vision encoder folder (the pack's image_encoder/: config.json + safetensors)");
  const VlmVocab vocab = VlmVocab::load(o.tokenizer_path);
  const Checkpoint enc_ck = Checkpoint::open(o.encoder_dir);
  const ModelPart& enc = enc_ck.parts().at(0);
  if (!enc.has_weights() || enc.config.is_null())
    throw CheckpointError(o.encoder_dir + ": expected a CLIP vision encoder folder (config.json + model.safetensors)");

  const VlmModelSizes sizes = o.sizes.resolve(o.tiny);
  const Json config = vlm_llava_config(enc.config, sizes, vocab, o.ftz);
  const LlavaConfig cfg = LlavaConfig::from_json(config, "VLM config");
  const ResolvedStage s_aug = resolve_stage("augment", o.augment, kAugment, o);
  const ResolvedStage s_vision = resolve_stage("vision", o.vision, kVision, o);
  const ResolvedStage s_text = resolve_stage("text", o.text, kText, o);
  const ResolvedStage s_grid = resolve_stage("grid", o.grid, kGrid, o);
  const ResolvedStage s_align = resolve_stage("align", o.align, kAlign, o);
  const ResolvedStage s_ft = resolve_stage("finetune", o.finetune, kFinetune, o);
  for (const ResolvedStage* s : {&s_aug, &s_vision, &s_text, &s_grid, &s_align, &s_ft})
    if (s->steps < 0 || s->batch < 1) throw ConfigError("VLM training: stage " + s->name + " needs steps >= 0 and batch >= 1");
  if (o.lookup_weight < 0)
    throw ConfigError("VLM training: --lookup must be >= 0 (got " + std::to_string(o.lookup_weight) + ")");
  if (o.align_grid < 0) throw ConfigError("VLM training: --align-grid must be >= 0 (got " + std::to_string(o.align_grid) + ")");
  if (!(o.paraphrase >= 0 && o.paraphrase <= 1))
    throw ConfigError("VLM training: --paraphrase must be in [0, 1] (got " + std::to_string(o.paraphrase) + ")");
  if (!(o.finetune_text_share >= 0 && o.finetune_text_share < 1))
    throw ConfigError("VLM training: --finetune-text must be in [0, 1) (got " + std::to_string(o.finetune_text_share) + ")");
  if (!o.init_dir.empty()) init_part(config, o);
  check_work_dir(o.work_dir, run_fingerprint(config, o, s_text, s_ft, s_vision, s_grid));

  // Model: seeded init, the pack's encoder as the vision tower, FtZ fusions starting as identity.
  at::manual_seed(o.seed);
  LlavaForConditionalGeneration model(cfg);
  model->init_weights(world::hash_combine(o.seed, 1));
  if (model->ftz) model->ftz->init_weights(world::hash_combine(o.seed, 2), 0.02, /*zero_out_proj=*/true);
  model->vision_tower->load(*enc.weights);
  if (!o.init_dir.empty()) init_from_folder(model, config, o);
  model->train();
  int64_t total_params = 0;
  for (const auto& p : model->parameters(true)) total_params += p.numel();
  {
    char buf[256];
    std::snprintf(buf, sizeof buf,
                  "[vlm] LLaMA %lld x %lld (heads %lld, mlp %lld), vocab %lld (image token %lld), vision %lld x %lld "
                  "(%lld features, layer %lld)%s: %.2f M parameters",
                  static_cast<long long>(cfg.text.num_hidden_layers), static_cast<long long>(cfg.text.hidden_size),
                  static_cast<long long>(cfg.text.num_attention_heads), static_cast<long long>(cfg.text.intermediate_size),
                  static_cast<long long>(cfg.text.vocab_size), static_cast<long long>(vocab.image_token),
                  static_cast<long long>(cfg.vision.num_hidden_layers), static_cast<long long>(cfg.vision.hidden_size),
                  static_cast<long long>(cfg.image_feature_tokens()), static_cast<long long>(cfg.vision_feature_layer),
                  o.ftz ? " + FtZ conv encoder" : "", static_cast<double>(total_params) / 1e6);
    log(buf);
  }

  const std::string pre_path = (fs::path(o.encoder_dir) / "preprocessor_config.json").string();
  ClipPreprocessConfig pre;
  if (fs::is_regular_file(pre_path)) {
    try {
      pre = ClipPreprocessConfig::from_json(read_json_file(pre_path));
    } catch (...) {
      rethrow_with_context(pre_path);
    }
  } else {
    pre.shortest_edge = static_cast<int>(cfg.vision.image_size);
    pre.crop_h = pre.crop_w = static_cast<int>(cfg.vision.image_size);
  }
  const SceneSource scenes(o.seed, o.scenes);
  const int64_t T = cfg.image_feature_tokens();
  // Patch labels need whole patches of the scenes: checked now, not after the first stages.
  const int scene_res = world::SamplerOptions{}.resolution;
  if (o.augment_labels && o.ftz) check_label_grid(scene_res, cfg.vision.image_size / sizes.aug_patch);
  if (o.finetune_labels > 0 || s_vision.steps > 0 || s_grid.steps > 0 || o.lookup_weight > 0)
    check_label_grid(scene_res, cfg.vision.image_size / cfg.vision.patch_size);
  // The lookup loss's head: layer lookup_layer (from the last when < 0), head 0.
  const int64_t lm_layers = cfg.text.num_hidden_layers;
  const int64_t lookup_layer = o.lookup_layer < 0 ? lm_layers + o.lookup_layer : o.lookup_layer;
  if (o.lookup_weight > 0) {
    if (lookup_layer < 0 || lookup_layer >= lm_layers)
      throw ConfigError("VLM training: --lookup-layer " + str(o.lookup_layer) + " is not a layer of the " + str(lm_layers) +
                        "-layer LM (0.." + str(lm_layers - 1) + ", or -1.." + str(-lm_layers) + " from the last)");
    const int64_t g = cfg.vision.image_size / cfg.vision.patch_size;
    if (g * g != T)
      throw ConfigError("VLM training: the lookup loss needs one image token per patch (" + str(T) + " tokens, " + str(g) +
                        "x" + str(g) + " patches)");
  }

  auto image_batch = [&](uint64_t seed, int64_t B, std::vector<world::Scene>* out_scenes) {
    std::vector<at::Tensor> px;
    for (int64_t b = 0; b < B; ++b) {
      world::Rng rng(world::hash_combine(seed, static_cast<uint64_t>(b)));
      out_scenes->push_back(scenes.draw(rng));
      px.push_back(scene_pixels(out_scenes->back(), pre));
    }
    at::Tensor pixels = at::stack(px);  // [B, 3, S, S]
    if (pixels.size(2) != cfg.vision.image_size || pixels.size(3) != cfg.vision.image_size)
      throw ConfigError(pre_path + ": preprocessing gives " + str(pixels.size(3)) + "x" + str(pixels.size(2)) +
                        " images, the vision encoder takes " + str(cfg.vision.image_size));
    return pixels;
  };
  // Sequences of one step: images with their questions (vision) or contexts (text).
  auto vision_batch = [&](uint64_t seed, int64_t B, std::vector<world::Scene>* scenes_out = nullptr) {
    std::vector<world::Scene> sc;
    const at::Tensor pixels = image_batch(seed, B, &sc);
    if (scenes_out) *scenes_out = sc;
    std::vector<VlmSequence> seqs;
    for (int64_t b = 0; b < B; ++b) {
      world::Rng rng(world::hash_combine(seed ^ 0x9e57ull, static_cast<uint64_t>(b)));
      seqs.push_back(vlm_image_sequence(
          vocab, vlm_training_questions(sc[static_cast<size_t>(b)], rng, o.describe_probability, o.balance_existence,
                                        o.relation_drill),
          o.max_text_tokens, o.isolated_turns));
    }
    Batch batch = collate(seqs, vocab, T);
    batch.pixels = pixels;
    return std::make_pair(batch, seqs.front());
  };
  auto text_batch = [&](uint64_t seed, int64_t B) {
    std::vector<VlmSequence> seqs;
    for (int64_t b = 0; b < B; ++b) {
      world::Rng rng(world::hash_combine(seed, static_cast<uint64_t>(b)));
      const world::Scene scene = scenes.draw(rng);
      std::string context = rng.chance(0.8) ? world::describe_scene(scene, rng) : world::make_caption(scene, rng).text;
      if (o.paraphrase > 0) context = world::paraphrase(context, rng, o.paraphrase);
      std::vector<world::Question> qs = vlm_training_questions(scene, rng, 0.0);  // no "describe": the context is one
      seqs.push_back(vlm_text_sequence(vocab, context, qs, o.max_text_tokens));
    }
    return std::make_pair(collate(seqs, vocab, 0), seqs.front());
  };

  VlmTrainReport report;
  report.parameters = total_params;
  auto stage_seed = [&](uint64_t k) { return world::hash_combine(o.seed, 0x57a9e000ull + k); };

  // ---- augment: the conv encoder learns to reconstruct the render from its tokens ----
  if (o.ftz) {
    auto& aug = dynamic_cast<ConvVisionEncoderImpl&>(*model->ftz->augmenting_encoder);
    const int64_t P = sizes.aug_patch;
    torch::nn::Linear head(sizes.aug_hidden, cfg.vision.num_channels * P * P);  // the decoder: token -> patch pixels
    {
      at::NoGradGuard no_grad;
      at::Generator gen = at::detail::createCPUGenerator(stage_seed(100));
      head->weight.normal_(0.0, 0.02, gen);
      head->bias.zero_();
    }
    set_trainable(*model, false);
    set_trainable(aug, true);
    NamedTensors params = named_trainable_parameters(aug, "encoder.");
    for (auto& p : named_trainable_parameters(*head, "head.")) params.push_back(p);
    std::optional<PatchLabelHeads> label_heads;
    if (o.augment_labels) {
      label_heads.emplace(sizes.aug_hidden, stage_seed(101));
      for (auto& p : label_heads->parameters("")) params.push_back(p);
    }
    const int64_t grid = cfg.vision.image_size / P;
    report.stages.push_back(run_stage(s_aug, stage_seed(0), params, o, 0.0, [&](uint64_t seed) {
      std::vector<world::Scene> sc;
      const at::Tensor px = image_batch(seed, s_aug.batch, &sc);         // [B, 3, S, S]
      const at::Tensor tokens = aug.hidden_states(px, aug.num_layers()).back();  // [B, N, D]
      at::Tensor loss = at::mse_loss(head(tokens), patchify(px, P));
      // Weighted so that the classification terms (~2 nats at the start) do not drown the
      // reconstruction (~0.3 at the start, ~0.04 trained).
      if (label_heads) loss = loss + 0.1 * label_heads->loss(tokens, patch_label_targets(sc, grid));
      return loss;
    }));
  }

  // ---- vision: the anchor tower learns to tell, patch by patch, what it shows ----
  // The heads carry on into the fine-tune's labels (when on), so that loss starts where this
  // stage left it.
  const int64_t vision_grid = cfg.vision.image_size / cfg.vision.patch_size;
  std::optional<PatchLabelHeads> label_heads;
  if (s_vision.steps > 0) {
    label_heads.emplace(cfg.vision.hidden_size, stage_seed(103), o.scene_labels);
    set_trainable(*model, false);
    set_trainable(*model->vision_tower, true);
    NamedTensors params = named_trainable_parameters(*model->vision_tower, "vision.");
    for (auto& p : label_heads->parameters("labels.")) params.push_back(p);
    report.stages.push_back(run_stage(s_vision, stage_seed(4), params, o, 0.0, [&](uint64_t seed) {
      std::vector<world::Scene> sc;
      const at::Tensor px = image_batch(seed, s_vision.batch, &sc);  // [B, 3, S, S]
      const at::Tensor v = model->vision_features(px);                // [B, N, Dv]
      const at::Tensor loss = label_heads->loss(v, patch_label_targets(sc, vision_grid, o.scene_labels));
      if (const std::string r = label_heads->report_if_due(o.checkpoint_every); !r.empty()) log("[vision] " + r);
      return loss;
    }));
  }

  // ---- text: the LM alone ----
  set_trainable(*model, false);
  set_trainable(*model->language_model, true);
  {
    const auto ex = text_batch(stage_seed(1), 1);
    log("[text] example: " + decode_for_log(vocab, ex.second.ids));
  }
  report.stages.push_back(run_stage(s_text, stage_seed(1), named_trainable_parameters(*model->language_model, "lm."), o,
                                    0.0, [&](uint64_t seed) {
                                      const Batch b = text_batch(seed, s_text.batch).first;
                                      return lm_loss(model, b, at::Tensor());
                                    }));

  // Image features with gradients only where something in the vision path trains.
  auto features = [&](const at::Tensor& pixels, bool vision_trains) {
    if (vision_trains) return model->image_features(pixels);
    at::Tensor v;
    {
      at::NoGradGuard no_grad;
      v = model->vision_features(pixels);
    }
    return model->multi_modal_projector(v);
  };
  {
    const auto ex = vision_batch(stage_seed(2), 1);
    log("[align] example (" + str(ex.second.turns) + " turns): " + decode_for_log(vocab, ex.second.ids));
  }
  // With --check: after the grid, align and finetune stages (done now or earlier), the share of
  // short answers right, teacher-forced, on 25 fixed batches of fresh training-split scenes:
  // from the symbolic image (what the LM can read) and from the image (what it does read).
  std::optional<SymbolicImage> symbolic;
  const at::Tensor& embedding = model->language_model->model->embed_tokens->weight;

  // The answers' loss of an image batch plus, with lookup_weight, the lookup loss of the same
  // forward pass; `stage` logs the looking head's mean weight on the answers' patches every
  // checkpoint interval.
  struct LookupTally {
    double mass = 0;
    int64_t batches = 0, calls = 0;
  };
  std::map<std::string, LookupTally> lookup_tallies;
  auto answer_loss = [&](const std::string& stage, const Batch& b, const at::Tensor& feats,
                         const std::vector<world::Scene>& sc, int64_t* right = nullptr) {
    if (o.lookup_weight <= 0) return lm_loss(model, b, feats, right);
    LookupTally& tally = lookup_tallies[stage];
    const LookupTargets targets = lookup_targets(b, sc, vision_grid);
    at::Tensor loss;
    if (targets.rows.numel() == 0) {
      loss = lm_loss(model, b, feats, right);
    } else {
      AttentionHookList hooks;
      auto recorder = std::make_shared<HeadRecorder>(static_cast<int>(lookup_layer));
      hooks.add(recorder);
      loss = lm_loss(model, b, feats, right, &hooks);
      double mass = 0;
      loss = loss + o.lookup_weight * lookup_loss(recorder->weights, b, targets, &mass);
      tally.mass += mass;
      ++tally.batches;
    }
    if (++tally.calls % std::max<int64_t>(o.checkpoint_every, 1) == 0 && tally.batches > 0) {
      log("[" + stage + "] lookup head's weight on the answers' patches: " +
          std::to_string(static_cast<int>(100.0 * tally.mass / static_cast<double>(tally.batches) + 0.5)) + "%");
      tally.mass = 0;
      tally.batches = 0;
    }
    return loss;
  };
  auto report_answers = [&](const std::string& stage, bool from_symbolic) {
    if (o.check <= 0) return;
    at::NoGradGuard no_grad;
    std::map<std::string, std::pair<int64_t, int64_t>> by_kind;  // kind -> (right, asked)
    for (uint64_t k = 0; k < 25; ++k) {
      std::vector<world::Scene> sc;
      const uint64_t seed = stage_seed(200 + k);
      const at::Tensor pixels = image_batch(seed, 8, &sc);
      const at::Tensor f = from_symbolic ? (*symbolic)(sc, embedding) : model->image_features(pixels);
      // Four questions per scene, each the first turn of its own sequence (as the eval asks).
      std::vector<std::vector<world::Question>> qs;
      for (size_t i = 0; i < sc.size(); ++i) {
        world::Rng rng(world::hash_combine(seed ^ 0xa5ull, i));
        qs.push_back(vlm_training_questions(sc[i], rng, 0.0, o.balance_existence, o.relation_drill));
      }
      for (size_t j = 0; j < 4; ++j) {
        std::vector<VlmSequence> seqs;
        std::vector<std::string> kinds;
        std::vector<int64_t> rows;  // the scenes asked (a question too long for max_text_tokens is not)
        for (size_t i = 0; i < qs.size(); ++i) {
          const world::Question& x = qs[i][j % qs[i].size()];
          VlmSequence q;
          try {
            q = vlm_image_sequence(vocab, {x}, o.max_text_tokens);
          } catch (const ConfigError&) {
            continue;  // not even its prompt fits
          }
          if (q.ids.back() != vocab.eos) continue;  // its answer was cut
          seqs.push_back(std::move(q));
          kinds.push_back(x.kind);
          rows.push_back(static_cast<int64_t>(i));
        }
        if (seqs.empty()) continue;
        const std::vector<bool> ok = answers_right(model, collate(seqs, vocab, T), f.index_select(0, at::tensor(rows)), vocab.eos);
        for (size_t i = 0; i < ok.size() && i < kinds.size(); ++i) {
          by_kind[kinds[i]].first += ok[i];
          ++by_kind[kinds[i]].second;
        }
      }
    }
    int64_t right = 0, asked = 0;
    std::string kinds;
    for (const auto& [kind, cn] : by_kind) {
      right += cn.first, asked += cn.second;
      kinds += " " + kind + " " + std::to_string(static_cast<int>(100.0 * cn.first / std::max<int64_t>(cn.second, 1) + 0.5));
    }
    log("[" + stage + "] first-turn answers right (teacher-forced, " + str(asked) + " questions) from the " +
        (from_symbolic ? "symbolic image: " : "image: ") +
        std::to_string(static_cast<int>(100.0 * static_cast<double>(right) / std::max<int64_t>(asked, 1) + 0.5)) +
        "% —" + kinds);
  };

  // ---- grid: the LM alone learns to answer from the symbolic image ----
  // Its answer-token accuracy is logged: how well the LM reads a perfect patch grid bounds what
  // it can read from vision features.
  if (s_grid.steps > 0) {
    symbolic.emplace(vocab, vision_grid, cfg.text.hidden_size, stage_seed(104), o.grid_own_table);
    if (symbolic->grid * symbolic->grid != T)
      throw ConfigError("VLM training: the grid stage needs one image feature per patch (" + str(T) + " features, " +
                        str(vision_grid) + "x" + str(vision_grid) + " patches); not with FtZ's extra tokens");
    set_trainable(*model, false);
    set_trainable(*model->language_model, true);
    NamedTensors params = named_trainable_parameters(*model->language_model, "lm.");
    params.push_back({"grid.position", symbolic->position});
    if (symbolic->table.defined()) params.push_back({"grid.table", symbolic->table});
    // One count of this call's steps: the answer-token line every checkpoint interval, the
    // first-turn report every five.
    const int64_t every = std::max<int64_t>(o.checkpoint_every, 1);
    int64_t right = 0, seen = 0, calls = 0;
    report.stages.push_back(run_stage(s_grid, stage_seed(5), params, o, 0.0, [&](uint64_t seed) {
      ++calls;
      if (calls % (5 * every) == 0) report_answers("grid", true);
      std::vector<world::Scene> sc;
      const Batch b = vision_batch(seed, s_grid.batch, &sc).first;
      const at::Tensor loss = answer_loss("grid", b, (*symbolic)(sc, embedding), sc, &right);
      seen += b.labels.numel();
      if (calls % every == 0) {
        log("[grid] answer tokens right (last " + str(every) + " steps): " +
            std::to_string(static_cast<int>(100.0 * static_cast<double>(right) / static_cast<double>(seen) + 0.5)) + "%");
        right = seen = 0;
      }
      return loss;
    }));
    symbolic->position.set_requires_grad(false);
    if (symbolic->table.defined()) symbolic->table.set_requires_grad(false);
    report_answers("grid", true);
  }

  // ---- align: projector (+ fusion), LM and vision frozen ----
  if (model->multi_modal_projector->position_embedding.defined()) {
    // The image position table starts as a sin-cos table at the scale of the projected image
    // tokens (sincos_position_table); a resumed align or fine-tune loads its own.
    at::NoGradGuard no_grad;
    at::Tensor& table = model->multi_modal_projector->position_embedding;
    table.zero_();
    std::vector<world::Scene> sc;
    const double rms =
        model->image_features(image_batch(stage_seed(7), 8, &sc)).to(at::kFloat).pow(2).mean().sqrt().item<double>();
    const bool grid = [&] {
      const auto g = static_cast<int64_t>(std::llround(std::sqrt(static_cast<double>(table.size(0)))));
      return g * g == table.size(0);
    }();
    table.copy_(sincos_position_table(table.size(0), table.size(1), grid) * rms);
    log("[align] image position table: sin-cos at the image tokens' RMS " + std::to_string(rms));
  }
  set_trainable(*model, false);
  set_trainable(*model->multi_modal_projector, true);
  NamedTensors align_params = named_trainable_parameters(*model->multi_modal_projector, "projector.");
  if (model->ftz) {
    set_trainable(*model->ftz->fusions, true);
    for (auto& p : named_trainable_parameters(*model->ftz->fusions, "ftz.fusions.")) align_params.push_back(p);
  }
  report.stages.push_back(run_stage(s_align, stage_seed(2), align_params, o, 0.0, [&](uint64_t seed) {
    std::vector<world::Scene> sc;
    const Batch b = vision_batch(seed, s_align.batch, &sc).first;
    const at::Tensor f = features(b.pixels, static_cast<bool>(model->ftz));  // [B, T, H]
    at::Tensor loss = answer_loss("align", b, f, sc);
    if (symbolic && o.align_grid > 0) {
      at::Tensor target;
      {
        at::NoGradGuard no_grad;
        target = (*symbolic)(sc, embedding);
      }
      loss = loss + o.align_grid * symbolic_regression(f, target);
    }
    return loss;
  }));
  if (s_align.steps > 0) report_answers("align", false);

  // ---- finetune: LM + projector (+ fusion, + vision with train_vision) ----
  set_trainable(*model, false);
  set_trainable(*model->language_model, true);
  set_trainable(*model->multi_modal_projector, true);
  if (model->ftz) set_trainable(*model->ftz->fusions, true);
  if (o.train_vision) {
    set_trainable(*model->vision_tower, true);
    if (model->ftz) set_trainable(*model->ftz, true);
  }
  const bool vision_trains = o.train_vision || static_cast<bool>(model->ftz);
  NamedTensors ft_params = named_trainable_parameters(*model);
  // finetune_labels: the vision features the projector reads must also tell, patch by patch,
  // what they show (the answers alone give the vision path too weak a signal to localise
  // objects in a small model trained from scratch).
  std::optional<PatchLabelHeads>& ft_heads = label_heads;
  if (o.finetune_labels > 0) {
    if (!ft_heads) ft_heads.emplace(cfg.vision.hidden_size, stage_seed(102), o.scene_labels);
    ft_heads->reset_tallies();  // the vision stage's, if it ran
    for (auto& p : ft_heads->parameters("labels.")) ft_params.push_back(p);
  } else {
    ft_heads.reset();
  }
  report.stages.push_back(run_stage(s_ft, stage_seed(3), ft_params, o, o.finetune_ema, [&](uint64_t seed) {
    if (o.finetune_text_share > 0 && world::Rng(world::hash_combine(seed, 0x7e47ull)).chance(o.finetune_text_share))
      return lm_loss(model, text_batch(seed, s_ft.batch).first, at::Tensor());  // a text-stage step
    std::vector<world::Scene> sc;
    const Batch b = vision_batch(seed, s_ft.batch, &sc).first;
    if (!ft_heads) return answer_loss("finetune", b, features(b.pixels, vision_trains), sc);
    const at::Tensor v = model->vision_features(b.pixels);  // [B, N, Dv], N = vision_grid^2
    const at::Tensor loss = answer_loss("finetune", b, model->multi_modal_projector(v), sc) +
                            o.finetune_labels * ft_heads->loss(v, patch_label_targets(sc, vision_grid, o.scene_labels));
    if (const std::string r = ft_heads->report_if_due(o.checkpoint_every); !r.empty()) log("[finetune] " + r);
    return loss;
  }));

  if (s_ft.steps > 0) {
    report_answers("finetune", false);
    if (symbolic) report_answers("finetune", true);
  }

  // ---- export ----
  set_trainable(*model, false);
  model->eval();
  write_output(o, model, config, vocab, pre_path);
  report.output = o.out_dir;
  log("[vlm] wrote " + o.out_dir + " (" + str(total_params) + " parameters, " + (o.f16 ? "F16" : "F32") + ")");

  if (o.check > 0) {
    VqaModel m = VqaModel::load(o.out_dir);
    const auto t0 = Clock::now();
    report.check = check_vlm(m, o.check, o.seed);
    log("[check] " + str(report.check.questions) + " held-out questions in " +
        std::to_string(seconds_since(t0)).substr(0, 5) + " s\n" + format_check_report(report.check));
  }
  return report;
}

// =============================================================================================
// Check

VlmCheckReport check_vlm(VqaModel& m, int64_t n, uint64_t seed) {
  VlmCheckReport r;
  VqaOptions vo;
  vo.max_new_tokens = 24;
  const uint64_t base = world::hash_combine(seed, 0xc4ec4ull);
  for (uint64_t i = 0; r.questions < n && i < 1000000; ++i) {
    const uint64_t s = world::sample_seed(base, i);
    const world::Scene scene = world::sample_scene(s);
    if (world::scene_split(scene) != world::Split::HeldOut) continue;
    world::Rng rng(world::hash_combine(s, 0x9a11ull));
    world::QuestionOptions qo;
    qo.split = world::Split::HeldOut;
    std::vector<world::Question> qs = world::make_questions(scene, rng, qo);
    qs.erase(std::remove_if(qs.begin(), qs.end(), [](const world::Question& q) { return q.kind == "describe"; }), qs.end());
    rng.shuffle(qs);
    if (qs.size() > 4) qs.resize(4);  // a few per scene: more scenes
    const Image image = world::render_scene(scene);
    for (const world::Question& q : qs) {
      if (r.questions >= n) break;
      const VqaAnswer a = ask(m, image, q.question, vo);
      const bool ok = answers_match(a.text, q.answer);  // the eval's rule (pipelines/vlm_eval.h)
      ++r.questions;
      r.correct += ok;
      auto& k = r.by_kind[q.kind];
      k.first += ok;
      ++k.second;
      if (r.examples.size() < 8) r.examples.push_back(q.question + " -> " + trim(a.text) + (ok ? "" : "  (want: " + q.answer + ")"));
    }
  }
  return r;
}

std::string format_check_report(const VlmCheckReport& r) {
  std::string out;
  char buf[160];
  for (const auto& [kind, cn] : r.by_kind) {
    std::snprintf(buf, sizeof buf, "  %-11s %4lld/%-4lld %5.1f%%\n", kind.c_str(), static_cast<long long>(cn.first),
                  static_cast<long long>(cn.second), cn.second ? 100.0 * cn.first / cn.second : 0.0);
    out += buf;
  }
  std::snprintf(buf, sizeof buf, "  %-11s %4lld/%-4lld %5.1f%%", "all", static_cast<long long>(r.correct),
                static_cast<long long>(r.questions), 100.0 * r.accuracy());
  out += buf;
  for (const std::string& e : r.examples) out += "\n  e.g. " + e;
  return out;
}

}  // namespace iris
