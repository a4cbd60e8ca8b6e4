#include "pipelines/draft_training.h"

#include <chrono>
#include <fstream>

#include <ATen/core/grad_mode.h>
#include <c10/core/InferenceMode.h>

#include "core/error.h"
#include "core/json_util.h"
#include "pipelines/vqa.h"
#include "world/dataset.h"
#include "world/render.h"

namespace iris {

namespace {

std::string str(int64_t v) { return std::to_string(v); }

// A normal (non-inference) copy, so tensors made under InferenceMode can enter autograd graphs.
at::Tensor plain_copy(const at::Tensor& t) {
  if (!t.defined()) return t;
  at::Tensor out = at::empty_like(t, t.options().requires_grad(false));
  {
    at::NoGradGuard no_grad;
    out.copy_(t);
  }
  return out;
}

}  // namespace

DraftExample make_draft_example(LlamaForCausalLM& target, const at::Tensor& prompt_embeds, const at::Tensor& image_mask,
                                int64_t answer_tokens) {
  if (answer_tokens < 1) throw ConfigError("draft training: answer_tokens must be >= 1, got " + str(answer_tokens));
  GenerateOptions g;
  g.max_new_tokens = answer_tokens;
  const GenerateResult answer = plain_generate(target, prompt_embeds, image_mask, g);

  at::NoGradGuard no_grad;
  DraftExample ex;
  ex.prompt_length = prompt_embeds.size(1);
  const at::Tensor ids = at::tensor(answer.tokens, at::TensorOptions().dtype(at::kLong)).view({1, -1});
  ex.embeds = plain_copy(at::cat({prompt_embeds.to(target->model->embed_tokens->weight.options()), target->model->embed(ids)}, 1));
  if (image_mask.defined())
    ex.image_mask = at::cat({image_mask.to(at::kCPU).ne(0), at::zeros({1, ids.size(1)}, at::kBool)}, 1);
  LlamaInput in;
  in.inputs_embeds = ex.embeds;
  in.image_mask = ex.image_mask;
  LlamaForwardOptions fo;
  fo.logits = LogitsMode::None;
  ex.hidden = plain_copy(target->forward(in, nullptr, fo).last_hidden_state);
  return ex;
}

DraftExample make_draft_example(LlamaForCausalLM& target, const std::vector<int64_t>& prompt, int64_t answer_tokens) {
  if (prompt.empty()) throw ConfigError("draft training: empty prompt");
  at::Tensor embeds;
  {
    at::NoGradGuard no_grad;
    embeds = target->model->embed(at::tensor(prompt, at::TensorOptions().dtype(at::kLong)).view({1, -1}));
  }
  return make_draft_example(target, embeds, at::Tensor(), answer_tokens);
}

DraftLoss draft_loss(VispecDraft& draft, LlamaForCausalLM& target, const DraftExample& ex, const DraftLossOptions& o,
                     at::Generator* gen) {
  const int64_t L = ex.embeds.size(1), n = L - 1, P = ex.prompt_length;
  if (ex.hidden.sizes() != ex.embeds.sizes() || ex.embeds.dim() != 3 || ex.embeds.size(0) != 1)
    throw ShapeError("draft training: an example's embeds and hidden must both be [1, L, H]");
  if (P < 1 || P >= L) throw ConfigError("draft training: an example needs a prompt and at least one answer token");
  if (o.mtp_steps < 0) throw ConfigError("draft training: mtp_steps must be >= 0");

  // Slot t reads token t+1 and hidden t, and is trained toward hidden t+1 and the target's
  // distribution of token t+2; the answer positions are slots P-1 .. L-2.
  const at::Tensor next = ex.embeds.narrow(1, 1, n);
  const at::Tensor h_in = ex.hidden.narrow(1, 0, n);
  const at::Tensor h_target = ex.hidden.narrow(1, 1, n);
  const at::Tensor next_image = ex.image_mask.defined() ? ex.image_mask.narrow(1, 1, n) : at::Tensor();
  const at::Tensor pos = at::arange(n, at::TensorOptions().dtype(at::kLong)).view({1, n});
  at::Tensor p_target;  // [1, n, V]
  {
    at::NoGradGuard no_grad;
    p_target = at::softmax(target->logits(h_target).to(at::kFloat), -1);
  }
  at::Tensor noisy = h_in;
  if (o.noise > 0) {
    at::Tensor u = at::empty(h_in.sizes(), h_in.options().requires_grad(false));
    if (gen) u.uniform_(-0.5 * o.noise, 0.5 * o.noise, *gen);
    else u.uniform_(-0.5 * o.noise, 0.5 * o.noise);
    noisy = h_in + u;
  }

  DraftSequenceOutput first = draft->forward_sequence(next, noisy, next_image, pos, at::Tensor(), nullptr);
  std::vector<int64_t> rows, slots;  // output rows on answer positions, and their slots
  for (size_t r = 0; r < first.slots.size(); ++r)
    if (first.slots[r] >= P - 1) {
      rows.push_back(static_cast<int64_t>(r));
      slots.push_back(first.slots[r]);
    }
  if (rows.empty()) throw ConfigError("draft training: no answer position survives (the answer is all image tokens?)");
  const at::TensorOptions long_opts = at::TensorOptions().dtype(at::kLong);
  const at::Tensor row_idx = at::tensor(rows, long_opts), slot_idx = at::tensor(slots, long_opts);
  const at::Tensor all_slots = at::tensor(first.slots, long_opts);
  const at::Tensor want_h = h_target.index_select(1, slot_idx);
  const at::Tensor want_p = p_target.index_select(1, slot_idx);

  DraftLoss loss;
  loss.positions = static_cast<int64_t>(rows.size());
  at::Tensor out = first.out;
  for (int64_t s = 0; s <= o.mtp_steps; ++s) {
    const at::Tensor pred = out.index_select(1, row_idx);  // [1, m, H]
    const at::Tensor feat = at::smooth_l1_loss(pred, want_h);
    const at::Tensor logits = draft->logits(pred).to(at::kFloat);
    const at::Tensor ce = -(want_p * at::log_softmax(logits, -1)).sum(-1).mean();
    const at::Tensor term = feat * o.feature_weight + ce * o.token_weight;
    loss.total = loss.total.defined() ? loss.total + term : term;
    loss.feature += feat.item<double>();
    loss.token += ce.item<double>();
    if (s == 0) loss.top1 = logits.argmax(-1).eq(want_p.argmax(-1)).to(at::kDouble).mean().item<double>();
    if (s == o.mtp_steps) break;
    // The next pass reads, at slot t, the draft's own output of slot t-1 (what drafting feeds it).
    const at::Tensor full = at::zeros_like(h_in).index_copy(1, all_slots, out);
    const at::Tensor fed = at::cat({noisy.narrow(1, 0, 1), full.narrow(1, 0, n - 1)}, 1);
    out = draft->forward_sequence(next, fed, next_image, pos, at::Tensor(), nullptr).out;
  }
  const double passes = static_cast<double>(o.mtp_steps + 1);
  loss.total = loss.total / passes;
  loss.feature /= passes;
  loss.token /= passes;
  return loss;
}

double train_draft(LlamaForCausalLM& target, VispecDraft& draft, const std::vector<DraftExample>& data,
                   const DraftTrainOptions& o) {
  if (data.empty()) throw ConfigError("draft training: no examples");
  if (o.batch < 1) throw ConfigError("draft training: batch must be >= 1, got " + str(o.batch));
  for (auto& p : target->parameters()) p.requires_grad_(false);  // frozen
  draft->attach(target);
  draft->train();
  Trainer trainer(named_trainable_parameters(*draft), o.trainer);
  trainer.resume();
  double last = 0;
  trainer.run([&](int64_t, at::Generator& gen) {
    at::Tensor total;
    const at::Tensor pick = at::randint(static_cast<int64_t>(data.size()), {o.batch}, gen, at::TensorOptions().dtype(at::kLong));
    for (int64_t b = 0; b < o.batch; ++b) {
      const DraftLoss l = draft_loss(draft, target, data[pick[b].item<int64_t>()], o.loss, &gen);
      total = total.defined() ? total + l.total : l.total;
    }
    total = total / static_cast<double>(o.batch);
    last = total.item<double>();
    return total;
  });
  draft->eval();
  return last;
}

DraftEvaluation evaluate_draft(LlamaForCausalLM& target, VispecDraft& draft,
                               const std::vector<std::vector<int64_t>>& prompts, const SpeculativeOptions& opt) {
  DraftEvaluation e;
  int64_t accepted = 0;
  for (const auto& p : prompts) {
    const SpeculativeResult r = speculative_generate(target, draft, p, opt);
    accepted += r.stats.accepted;
    e.cycles += r.stats.cycles;
    e.tokens += static_cast<int64_t>(r.result.tokens.size());
  }
  e.tau = e.cycles ? static_cast<double>(accepted) / e.cycles : 0.0;
  return e;
}

SpeedEvaluation evaluate_draft_speed(LlamaForCausalLM& target, VispecDraft& draft,
                                     const std::vector<EmbedsPrompt>& prompts, const SpeculativeOptions& opt) {
  SpeedEvaluation e;
  int64_t accepted = 0;
  auto now = [] { return std::chrono::steady_clock::now(); };
  auto ms = [](auto a, auto b) { return std::chrono::duration<double, std::milli>(b - a).count(); };
  for (const EmbedsPrompt& p : prompts) {
    const auto t0 = now();
    const SpeculativeResult r = speculative_generate(target, draft, p.embeds, p.image_mask, opt);
    const auto t1 = now();
    const GenerateResult plain = plain_generate(target, p.embeds, p.image_mask, opt.generate);
    const auto t2 = now();
    e.speculative_ms += ms(t0, t1);
    e.plain_ms += ms(t1, t2);
    accepted += r.stats.accepted;
    e.draft.cycles += r.stats.cycles;
    e.draft.tokens += static_cast<int64_t>(r.result.tokens.size());
    e.identical += plain.tokens == r.result.tokens;
    ++e.prompts;
  }
  e.draft.tau = e.draft.cycles ? static_cast<double>(accepted) / e.draft.cycles : 0.0;
  return e;
}

std::vector<EmbedsPrompt> tinyworld_describe_prompts(VqaModel& model, int64_t count, uint64_t base_seed,
                                                     bool held_out) {
  world::DatasetOptions d;
  d.base_seed = base_seed;
  d.count = static_cast<int>(count);
  d.split = held_out ? world::Split::HeldOut : world::Split::Train;
  std::vector<EmbedsPrompt> out;
  for (uint64_t seed : world::split_seeds(d)) {
    const world::Sample sample = world::make_sample(seed, d);
    const LlavaMerged merged = vqa_merged_prompt(model, world::render_scene(sample.scene), "Describe the image.");
    out.push_back({merged.inputs_embeds, merged.image_mask});
  }
  return out;
}

std::vector<std::vector<int64_t>> read_prompt_file(const std::string& path,
                                                   const std::function<std::vector<int64_t>(const std::string&)>& encode) {
  std::ifstream f(path);
  if (!f) throw IoError(join_context(path, "cannot open the prompt file"));
  std::vector<std::vector<int64_t>> out;
  std::string line;
  for (int64_t no = 1; std::getline(f, line); ++no) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string what = path + ":" + str(no);
    const Json j = parse_json(line, what);
    if (!j.is_object()) throw FormatError(join_context(what, "expected a JSON object per line"));
    std::vector<int64_t> ids;
    if (j.contains("ids")) {
      if (!j["ids"].is_array()) throw FormatError(join_context(what, "key \"ids\": expected an array of token ids"));
      for (const Json& t : j["ids"]) {
        if (!t.is_number_integer()) throw FormatError(join_context(what, "key \"ids\": expected integers"));
        ids.push_back(t.get<int64_t>());
      }
    } else if (j.contains("prompt") && j["prompt"].is_string()) {
      if (!encode) throw FormatError(join_context(what, "a text prompt needs a tokenizer (tokenizer.model in the target folder)"));
      ids = encode(j["prompt"].get<std::string>());
    } else {
      throw FormatError(join_context(what, "expected \"ids\" (token ids) or \"prompt\" (text)"));
    }
    if (ids.empty()) throw FormatError(join_context(what, "empty prompt"));
    out.push_back(std::move(ids));
  }
  if (out.empty()) throw FormatError(join_context(path, "no prompts"));
  return out;
}

}  // namespace iris
