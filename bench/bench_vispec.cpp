// ViSpec speculative decoding against plain greedy decoding, measured in the same run:
// tokens/s, mean accepted length τ (drafted tokens accepted per cycle, bonus not counted),
// target forwards, and whether the outputs are identical (they must be).
//
//   bench_vispec [--llava DIR --draft DIR [--text-draft DIR]]          a LLaVA folder (the starter
//                pack's VLM): "Describe the image." about held-out Tinyworld scenes
//   bench_vispec [--target DIR --draft DIR [--data prompts.jsonl]]      models from disk
//   bench_vispec [--hidden 512 --layers 8 --vocab 8000 --train-steps 200]    random target
//                [--prompts 4] [--prompt-len 32] [--tokens 64] [--chain 4]
//                [--top-k 4] [--depth 3] [--total 12] [--threads 0] [--text-only] [--reps 1] [--no-tree]
//                [--micro N]   per-call costs of a cycle's pieces, N calls each
//
// Random target: its weights are random, so a random draft would accept almost nothing. The
// bench first trains the draft for --train-steps on the target's own answers to the bench
// prompts (what `iris train draft` does), then measures; τ then says how well a one-layer draft
// tracks this target, not what a real model reaches.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/InferenceMode.h>

#include "core/error.h"
#include "core/runtime.h"
#include "core/runtime_env.h"
#include "pipelines/draft_training.h"
#include "pipelines/vqa.h"
#include "vlm/vispec.h"

using namespace iris;

namespace {

using Clock = std::chrono::steady_clock;

int64_t arg(int argc, char** argv, const char* name, int64_t fallback) {
  for (int i = 1; i + 1 < argc; ++i)
    if (std::strcmp(argv[i], name) == 0) return std::atoll(argv[i + 1]);
  return fallback;
}

std::string sarg(int argc, char** argv, const char* name) {
  for (int i = 1; i + 1 < argc; ++i)
    if (std::strcmp(argv[i], name) == 0) return argv[i + 1];
  return "";
}

bool flag(int argc, char** argv, const char* name) {
  for (int i = 1; i < argc; ++i)
    if (std::strcmp(argv[i], name) == 0) return true;
  return false;
}

// "1.23 0.98 0.75" (the machine is shared; the figures need the context).
std::string load_average() {
  double a = 0, b = 0, c = 0;
  if (std::FILE* f = std::fopen("/proc/loadavg", "r")) {
    if (std::fscanf(f, "%lf %lf %lf", &a, &b, &c) != 3) a = b = c = 0;
    std::fclose(f);
  }
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.2f %.2f %.2f", a, b, c);
  return buf;
}

// A prompt as the target's input embeddings (LLaVA: the image spliced in).
struct Prompt {
  at::Tensor embeds;      // [1, L, H]
  at::Tensor image_mask;  // [1, L] bool or undefined
};

struct Run {
  std::string name;
  double seconds = 0;  // decode (after prefill) summed over prompts
  int64_t tokens = 0, cycles = 0, accepted = 0, target_forwards = 0;
  double draft_ms = 0, verify_ms = 0, catchup_ms = 0;  // speculative runs: decode time by phase
  std::vector<std::vector<int64_t>> outputs;
  double tok_s() const { return seconds > 0 ? (tokens - static_cast<int64_t>(outputs.size())) / seconds : 0; }
};

void add_plain(Run& r, LlamaForCausalLM& target, const Prompt& p, const GenerateOptions& g) {
  const GenerateResult out = plain_generate(target, p.embeds, p.image_mask, g);
  r.seconds += out.decode_ms / 1000.0;
  r.tokens += static_cast<int64_t>(out.tokens.size());
  r.target_forwards += static_cast<int64_t>(out.tokens.size());  // prefill + one step per token after the first
  r.outputs.push_back(out.tokens);
}

void add_spec(Run& r, LlamaForCausalLM& target, VispecDraft& draft, const Prompt& p, const SpeculativeOptions& opt) {
  const SpeculativeResult out = speculative_generate(target, draft, p.embeds, p.image_mask, opt);
  r.seconds += out.stats.decode_ms / 1000.0;
  r.tokens += static_cast<int64_t>(out.result.tokens.size());
  r.cycles += out.stats.cycles;
  r.accepted += out.stats.accepted;
  r.target_forwards += out.stats.target_forwards;
  r.draft_ms += out.stats.draft_ms;
  r.verify_ms += out.stats.verify_ms;
  r.catchup_ms += out.stats.catchup_ms;
  r.outputs.push_back(out.result.tokens);
}

void report(const Run& r, const Run& plain) {
  std::printf("%-28s decode %8.1f tok/s", r.name.c_str(), r.tok_s());
  if (&r != &plain) {
    std::printf("   speedup x%.2f   tau %.2f   cycles %lld   target forwards %lld (plain %lld)   output %s",
                r.tok_s() / plain.tok_s(), r.cycles ? static_cast<double>(r.accepted) / r.cycles : 0.0,
                static_cast<long long>(r.cycles), static_cast<long long>(r.target_forwards),
                static_cast<long long>(plain.target_forwards), r.outputs == plain.outputs ? "identical" : "DIFFERS");
    // Where a cycle's time goes (per cycle, microseconds): what a speedup has to beat.
    const double per = r.cycles ? 1000.0 / static_cast<double>(r.cycles) : 0.0;
    const double rest = r.seconds * 1000.0 - r.draft_ms - r.verify_ms - r.catchup_ms;
    std::printf("\n%-28s per cycle: draft %.0f us, verify %.0f us, catch-up %.0f us, other %.0f us;"
                " plain: %.0f us per token", "", r.draft_ms * per, r.verify_ms * per, r.catchup_ms * per, rest * per,
                plain.tok_s() > 0 ? 1e6 / plain.tok_s() : 0.0);
  }
  std::printf("\n");
}

}  // namespace

int main(int argc, char** argv) {
  ensure_passive_openmp(argc, argv);
  set_threads(static_cast<int>(arg(argc, argv, "--threads", 0)));
  const int64_t n_prompts = arg(argc, argv, "--prompts", 4);
  const int64_t prompt_len = arg(argc, argv, "--prompt-len", 32);
  const int64_t n_new = arg(argc, argv, "--tokens", 64);
  const bool text_only = flag(argc, argv, "--text-only");
  const std::string target_dir = sarg(argc, argv, "--target"), draft_dir = sarg(argc, argv, "--draft");
  const std::string llava_dir = sarg(argc, argv, "--llava"), text_draft_dir = sarg(argc, argv, "--text-draft");

  try {
    std::unique_ptr<VqaModel> vqa;
    LlamaForCausalLM target{nullptr};
    VispecDraft draft{nullptr}, text_draft{nullptr};
    std::vector<Prompt> prompts;
    if (!llava_dir.empty()) {
      // The starter-pack VLM: held-out Tinyworld scenes, "Describe the image."
      if (draft_dir.empty()) throw ConfigError("bench_vispec: --llava needs --draft");
      vqa = std::make_unique<VqaModel>(VqaModel::load(llava_dir));
      target = vqa->model->language_model;
      draft = load_vispec_draft(draft_dir);
      if (!text_draft_dir.empty()) text_draft = load_vispec_draft(text_draft_dir);
      for (const EmbedsPrompt& p : tinyworld_describe_prompts(*vqa, n_prompts, 20240, /*held_out=*/true))
        prompts.push_back({p.embeds, p.image_mask});
    } else if (!target_dir.empty()) {
      target = load_llama(target_dir);
      if (draft_dir.empty()) throw ConfigError("bench_vispec: --target needs --draft");
      draft = load_vispec_draft(draft_dir);
    } else {
      LlamaConfig c;
      c.vocab_size = arg(argc, argv, "--vocab", 8000);
      c.hidden_size = arg(argc, argv, "--hidden", 512);
      c.intermediate_size = c.hidden_size * 8 / 3;
      c.num_hidden_layers = arg(argc, argv, "--layers", 8);
      c.num_attention_heads = c.hidden_size / 64;
      c.num_key_value_heads = std::max<int64_t>(1, c.num_attention_heads / 3);
      c.head_dim = 64;
      c.max_position_embeddings = 2048;
      c.eos_token_ids = {-1};  // random weights: no early stops, every run is n_new tokens
      target = LlamaForCausalLM(c);
      target->init_weights(1234);
      target->eval();
      draft = VispecDraft(VispecConfig::for_target(c, 2, !text_only));
      draft->init_weights(5678);
    }
    draft->attach(target);
    if (text_draft) text_draft->attach(target);
    std::vector<std::vector<int64_t>> token_prompts;
    if (prompts.empty()) {
      const std::string data = sarg(argc, argv, "--data");
      if (!data.empty()) token_prompts = read_prompt_file(data, nullptr);
      at::Generator gen = at::detail::createCPUGenerator(99);
      for (int64_t i = 0; token_prompts.empty() && i < n_prompts; ++i) {
        const at::Tensor p = at::randint(3, target->config().vocab_size, {prompt_len}, gen, at::kLong);
        token_prompts.emplace_back(p.data_ptr<int64_t>(), p.data_ptr<int64_t>() + prompt_len);
      }
      at::NoGradGuard no_grad;
      for (const auto& t : token_prompts)
        prompts.push_back({target->model->embed(at::tensor(t, at::TensorOptions().dtype(at::kLong)).view({1, -1})),
                           at::Tensor()});
    }
    const LlamaConfig& tc = target->config();
    std::printf("bench_vispec: target hidden %lld, %lld layers, vocab %lld; %zu prompts, %lld new tokens each; load average %s\n",
                (long long)tc.hidden_size, (long long)tc.num_hidden_layers, (long long)tc.vocab_size, prompts.size(),
                (long long)n_new, load_average().c_str());

    const int64_t train_steps = target_dir.empty() && llava_dir.empty() ? arg(argc, argv, "--train-steps", 200) : 0;
    if (train_steps > 0) {
      const auto t0 = Clock::now();
      std::vector<DraftExample> data;
      for (const auto& p : token_prompts) data.push_back(make_draft_example(target, p, n_new));
      DraftTrainOptions o;
      o.trainer.name = "draft";
      o.trainer.steps = train_steps;
      o.trainer.lr = 1e-3;
      o.trainer.warmup_steps = train_steps / 10;
      o.trainer.log_every = 0;
      o.batch = 2;
      o.loss.mtp_steps = 1;
      const double loss = train_draft(target, draft, data, o);
      std::printf("trained the draft for %lld steps on the target's answers (%.0f s, final loss %.3f)\n",
                  (long long)train_steps, std::chrono::duration<double>(Clock::now() - t0).count(), loss);
    }

    if (const int64_t iters = arg(argc, argv, "--micro", 0); iters > 0) {
      // Per-call costs of the pieces of a speculative cycle, each repeated `iters` times on
      // the first prompt's cache (rolled back after every call).
      c10::InferenceMode im;
      const Prompt& p = prompts.front();
      KVCache cache = target->new_cache(1, p.embeds.size(1) + 64);
      LlamaInput in;
      in.inputs_embeds = p.embeds;
      in.image_mask = p.image_mask;
      const LlamaOutput pre = target->forward(in, &cache, {});
      const int64_t len = cache.length();
      auto time_it = [&](const char* what, const std::function<void()>& fn) {
        fn();
        const auto t0 = Clock::now();
        for (int64_t i = 0; i < iters; ++i) fn();
        std::printf("%-36s %8.1f us\n", what,
                    std::chrono::duration<double, std::micro>(Clock::now() - t0).count() / static_cast<double>(iters));
      };
      at::Tensor tok = at::full({1, 1}, 5, at::TensorOptions().dtype(at::kLong));
      time_it("target step (1 token, last logits)", [&] { target->step(tok, cache); cache.truncate(len); });
      for (int64_t n : {2, 5, 8}) {
        LlamaInput v;
        v.input_ids = at::full({1, n}, 5, at::TensorOptions().dtype(at::kLong));
        const std::string what = "target verify (" + std::to_string(n) + " tokens, all logits)";
        time_it(what.c_str(), [&] { target->forward(v, &cache, {}); cache.truncate(len); });
      }
      KVCache dc = draft->new_cache(len + 64);
      const at::Tensor h = pre.last_hidden_state.narrow(1, len - 1, 1);
      const at::Tensor g0 = at::zeros({1, target->config().hidden_size});
      const at::Tensor pos = at::full({1, 1}, len, at::TensorOptions().dtype(at::kLong));
      time_it("draft pass (1 token)", [&] {
        draft->forward_text(draft->embed(tok), h, g0, pos, &dc);
        dc.truncate(0);
      });
      time_it("draft pass + logits + argmax", [&] {
        draft->logits(draft->forward_text(draft->embed(tok), h, g0, pos, &dc)).argmax().item<int64_t>();
        dc.truncate(0);
      });
      const at::Tensor h4 = pre.last_hidden_state.narrow(1, len - 4, 4);
      const at::Tensor pos4 = at::arange(len, len + 4, at::TensorOptions().dtype(at::kLong)).view({1, 4});
      const at::Tensor tok4 = at::full({1, 4}, 5, at::TensorOptions().dtype(at::kLong));
      time_it("draft catch-up (4 tokens)", [&] {
        draft->forward_text(draft->embed(tok4), h4, g0, pos4, &dc);
        dc.truncate(0);
      });
      return 0;
    }

    GenerateOptions g;
    g.max_new_tokens = n_new;
    g.stop_at_eos = !target_dir.empty() || !llava_dir.empty();
    SpeculativeOptions chain;
    chain.generate = g;
    const int64_t k = arg(argc, argv, "--chain", 4);
    chain.tree = DraftTreeOptions::chain(k);
    SpeculativeOptions tree;
    tree.generate = g;
    tree.tree.top_k = arg(argc, argv, "--top-k", 4);
    tree.tree.depth = arg(argc, argv, "--depth", 3);
    tree.tree.total_tokens = arg(argc, argv, "--total", 12);

    // Every configuration runs on each prompt in turn (interleaved), so a busy machine slows
    // them alike; one warm-up pass of each first.
    struct Config {
      VispecDraft* draft;  // null: plain decoding
      const SpeculativeOptions* opt;
    };
    const bool trees = !flag(argc, argv, "--no-tree");
    std::vector<Config> configs = {{nullptr, nullptr}, {&draft, &chain}};
    std::vector<Run> runs = {{"plain greedy"}, {"ViSpec chain " + std::to_string(k)}};
    if (trees) configs.push_back({&draft, &tree}), runs.push_back({"ViSpec tree"});
    if (text_draft) {
      configs.push_back({&text_draft, &chain});
      runs.push_back({"text-only draft chain " + std::to_string(k)});
      if (trees) configs.push_back({&text_draft, &tree}), runs.push_back({"text-only draft tree"});
    }
    const int64_t reps = std::max<int64_t>(1, arg(argc, argv, "--reps", 1));
    for (int64_t rep = -1; rep < reps; ++rep)
      for (const Prompt& p : prompts) {
        if (rep < 0 && &p != &prompts.front()) break;
        for (size_t c = 0; c < configs.size(); ++c) {
          Run scratch;
          Run& r = rep < 0 ? scratch : runs[c];
          if (!configs[c].draft) add_plain(r, target, p, g);
          else add_spec(r, target, *configs[c].draft, p, *configs[c].opt);
        }
      }
    bool identical = true;
    for (const Run& r : runs) {
      report(r, runs[0]);
      identical = identical && r.outputs == runs[0].outputs;
    }
    std::printf("load average at the end %s\n", load_average().c_str());
    return identical ? 0 : 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
