// ViSpec speculative decoding against plain greedy decoding, measured in the same run:
// tokens/s, mean accepted length τ (drafted tokens accepted per cycle, bonus not counted),
// target forwards, and whether the outputs are identical (they must be).
//
//   bench_vispec [--target DIR --draft DIR [--data prompts.jsonl]]      models from disk
//   bench_vispec [--hidden 512 --layers 8 --vocab 8000 --train-steps 200]    random target
//                [--prompts 4] [--prompt-len 32] [--tokens 64] [--chain 4]
//                [--top-k 4] [--depth 3] [--total 12] [--threads 0] [--text-only]
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
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include "core/error.h"
#include "core/runtime.h"
#include "core/runtime_env.h"
#include "pipelines/draft_training.h"
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

struct Run {
  double seconds = 0;  // decode (after prefill) summed over prompts
  int64_t tokens = 0, cycles = 0, accepted = 0, target_forwards = 0;
  std::vector<std::vector<int64_t>> outputs;
  double tok_s() const { return seconds > 0 ? (tokens - static_cast<int64_t>(outputs.size())) / seconds : 0; }
};

Run run_plain(LlamaForCausalLM& target, const std::vector<std::vector<int64_t>>& prompts, const GenerateOptions& g) {
  Run r;
  for (const auto& p : prompts) {
    const GenerateResult out = generate(target, p, g);
    r.seconds += out.decode_ms / 1000.0;
    r.tokens += static_cast<int64_t>(out.tokens.size());
    r.target_forwards += static_cast<int64_t>(out.tokens.size());  // prefill + one step per token after the first
    r.outputs.push_back(out.tokens);
  }
  return r;
}

Run run_spec(LlamaForCausalLM& target, VispecDraft& draft, const std::vector<std::vector<int64_t>>& prompts,
             const SpeculativeOptions& opt) {
  Run r;
  for (const auto& p : prompts) {
    const SpeculativeResult out = speculative_generate(target, draft, p, opt);
    r.seconds += out.stats.decode_ms / 1000.0;
    r.tokens += static_cast<int64_t>(out.result.tokens.size());
    r.cycles += out.stats.cycles;
    r.accepted += out.stats.accepted;
    r.target_forwards += out.stats.target_forwards;
    r.outputs.push_back(out.result.tokens);
  }
  return r;
}

void report(const char* name, const Run& r, const Run& plain) {
  std::printf("%-28s decode %7.2f tok/s", name, r.tok_s());
  if (&r != &plain) {
    std::printf("   speedup x%.2f   tau %.2f   cycles %lld   target forwards %lld (plain %lld)   output %s",
                r.tok_s() / plain.tok_s(), r.cycles ? static_cast<double>(r.accepted) / r.cycles : 0.0,
                static_cast<long long>(r.cycles), static_cast<long long>(r.target_forwards),
                static_cast<long long>(plain.target_forwards), r.outputs == plain.outputs ? "identical" : "DIFFERS");
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

  try {
    LlamaForCausalLM target{nullptr};
    VispecDraft draft{nullptr};
    std::vector<std::vector<int64_t>> prompts;
    if (!target_dir.empty()) {
      target = load_llama(target_dir);
      if (draft_dir.empty()) throw ConfigError("bench_vispec: --target needs --draft");
      draft = load_vispec_draft(draft_dir);
      const std::string data = sarg(argc, argv, "--data");
      if (!data.empty()) prompts = read_prompt_file(data, nullptr);
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
    if (prompts.empty()) {
      at::Generator gen = at::detail::createCPUGenerator(99);
      for (int64_t i = 0; i < n_prompts; ++i) {
        const at::Tensor p = at::randint(3, target->config().vocab_size, {prompt_len}, gen, at::kLong);
        prompts.emplace_back(p.data_ptr<int64_t>(), p.data_ptr<int64_t>() + prompt_len);
      }
    }
    const LlamaConfig& tc = target->config();
    std::printf("bench_vispec: target hidden %lld, %lld layers, vocab %lld; %zu prompts, %lld new tokens each; load average %s\n",
                (long long)tc.hidden_size, (long long)tc.num_hidden_layers, (long long)tc.vocab_size, prompts.size(),
                (long long)n_new, load_average().c_str());

    const int64_t train_steps = target_dir.empty() ? arg(argc, argv, "--train-steps", 200) : 0;
    if (train_steps > 0) {
      const auto t0 = Clock::now();
      std::vector<DraftExample> data;
      for (const auto& p : prompts) data.push_back(make_draft_example(target, p, n_new));
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

    GenerateOptions g;
    g.max_new_tokens = n_new;
    g.stop_at_eos = !target_dir.empty();
    run_plain(target, {prompts.front()}, g);  // warm-up
    const Run plain = run_plain(target, prompts, g);
    report("plain greedy", plain, plain);
    SpeculativeOptions chain;
    chain.generate = g;
    chain.tree = DraftTreeOptions::chain(arg(argc, argv, "--chain", 4));
    const Run rc = run_spec(target, draft, prompts, chain);
    report("ViSpec chain", rc, plain);
    SpeculativeOptions tree;
    tree.generate = g;
    tree.tree.top_k = arg(argc, argv, "--top-k", 4);
    tree.tree.depth = arg(argc, argv, "--depth", 3);
    tree.tree.total_tokens = arg(argc, argv, "--total", 12);
    const Run rt = run_spec(target, draft, prompts, tree);
    report("ViSpec tree", rt, plain);
    std::printf("load average at the end %s\n", load_average().c_str());
    return rc.outputs == plain.outputs && rt.outputs == plain.outputs ? 0 : 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
