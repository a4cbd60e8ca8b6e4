// LLaMA decoder throughput on a ~125M-parameter LLaMA shape (hidden 768, 12 layers, 12 heads,
// 4 KV heads, intermediate 2048, vocab 32000, random weights, F32):
//   * prefill tokens/s for a 512-token prompt,
//   * greedy decode tokens/s for 128 tokens after it,
// for Iris's fast attention path, its explicit (hookable) path, and a plain reference decoder
// measured in the same run (no pre-allocated cache: keys/values grow by cat every token, GQA
// by repeating K/V heads, LibTorch's generic linear), plus the peak RSS.
//
//   bench_llama [--prompt 512] [--tokens 128] [--reps 3] [--threads 0] [--no-reference] [--no-kernels]
//
// --no-kernels runs the fast path on LibTorch ops only (no oneDNN SGEMM, no AVX2 kernels).
// The machine is shared: the load average and a weight-streaming ceiling measured in the same
// run are printed to put the decode figure in context.
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/InferenceMode.h>

#include "core/runtime.h"
#include "core/runtime_env.h"
#include "core/torch_compat.h"
#include "vlm/llama.h"

using namespace iris;

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

double peak_rss_mb() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss / 1024.0;  // KiB on Linux
}

LlamaConfig bench_config() {
  LlamaConfig c;
  c.vocab_size = 32000;
  c.hidden_size = 768;
  c.intermediate_size = 2048;
  c.num_hidden_layers = 12;
  c.num_attention_heads = 12;
  c.num_key_value_heads = 4;
  c.head_dim = 64;
  c.max_position_embeddings = 2048;
  c.rms_norm_eps = 1e-5;
  return c;
}

struct Timing {
  double prefill_tok_s = 0, decode_tok_s = 0;
  std::vector<int64_t> tokens;
};

// ---- Iris: pre-allocated cache, prefill with last-position logits, step per token ----
Timing run_iris(LlamaForCausalLM& model, const at::Tensor& prompt, int64_t n_new, int reps, bool force_explicit) {
  Timing t;
  const int64_t L = prompt.size(1);
  LlamaForwardOptions fo;
  fo.logits = LogitsMode::Last;
  fo.force_explicit_attention = force_explicit;
  KVCache cache = model->new_cache(1, L + n_new);
  double best_prefill = 1e30, best_decode = 1e30;
  for (int r = 0; r < reps; ++r) {
    c10::InferenceMode guard;
    cache.reset();
    LlamaInput in;
    in.input_ids = prompt;
    auto t0 = Clock::now();
    at::Tensor logits = model->forward(in, &cache, fo).logits.reshape({-1});
    best_prefill = std::min(best_prefill, seconds_since(t0));
    std::vector<int64_t> toks;
    at::Tensor tok = at::empty({1, 1}, at::kLong);
    t0 = Clock::now();
    for (int64_t i = 0; i < n_new; ++i) {
      const int64_t next = logits.argmax().item<int64_t>();
      toks.push_back(next);
      if (i + 1 == n_new) break;
      tok.fill_(next);
      LlamaInput step;
      step.input_ids = tok;
      logits = model->forward(step, &cache, fo).logits.reshape({-1});
    }
    best_decode = std::min(best_decode, seconds_since(t0));
    t.tokens = toks;
  }
  t.prefill_tok_s = L / best_prefill;
  t.decode_tok_s = (n_new - 1) / best_decode;  // n_new - 1 decoder steps
  return t;
}

// ---- Reference: what a direct port does (cat per token, repeated K/V heads, at::linear) ----
struct RefLayer {
  at::Tensor wq, wk, wv, wo, wg, wu, wd, n1, n2;
};

at::Tensor ref_rms(const at::Tensor& x, const at::Tensor& w, double eps) {
  return w * (x * at::rsqrt(x.pow(2).mean(-1, true) + eps));
}

at::Tensor ref_rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  const int64_t h = x.size(-1) / 2;
  at::Tensor rot = at::cat({x.narrow(-1, h, h).neg(), x.narrow(-1, 0, h)}, -1);
  return x * cos + rot * sin;
}

Timing run_reference(LlamaForCausalLM& model, const at::Tensor& prompt, int64_t n_new, int reps) {
  const LlamaConfig& c = model->config();
  std::vector<RefLayer> layers;
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    auto l = model->model->layers->ptr<LlamaDecoderLayerImpl>(i);
    layers.push_back({l->self_attn->q_proj->weight, l->self_attn->k_proj->weight, l->self_attn->v_proj->weight,
                      l->self_attn->o_proj->weight, l->mlp->gate_proj->weight, l->mlp->up_proj->weight,
                      l->mlp->down_proj->weight, l->input_layernorm->weight, l->post_attention_layernorm->weight});
  }
  const at::Tensor emb = model->model->embed_tokens->weight, head = model->lm_head_weight(),
                   fnorm = model->model->norm->weight;
  const int64_t H = c.num_attention_heads, Hkv = c.num_key_value_heads, D = c.head_dim, G = H / Hkv;
  // RoPE table for the positions used.
  const int64_t total = prompt.size(1) + n_new;
  at::Tensor inv = 1.0 / at::pow(c.rope_theta, at::arange(0, D, 2, at::kFloat) / static_cast<double>(D));
  at::Tensor fr = at::outer(at::arange(total, at::kFloat), inv);
  at::Tensor cos_t = at::cat({fr, fr}, -1).cos(), sin_t = at::cat({fr, fr}, -1).sin();

  std::vector<at::Tensor> ks(layers.size()), vs(layers.size());
  auto forward = [&](const at::Tensor& ids, int64_t pos0) {
    const int64_t L = ids.size(1);
    at::Tensor x = at::embedding(emb, ids);  // [1, L, 768]
    at::Tensor cos = cos_t.narrow(0, pos0, L).view({1, 1, L, D}), sin = sin_t.narrow(0, pos0, L).view({1, 1, L, D});
    for (size_t i = 0; i < layers.size(); ++i) {
      const RefLayer& w = layers[i];
      at::Tensor h = ref_rms(x, w.n1, c.rms_norm_eps);
      at::Tensor q = at::linear(h, w.wq).view({1, L, H, D}).transpose(1, 2);
      at::Tensor k = at::linear(h, w.wk).view({1, L, Hkv, D}).transpose(1, 2);
      at::Tensor v = at::linear(h, w.wv).view({1, L, Hkv, D}).transpose(1, 2);
      q = ref_rope(q, cos, sin);
      k = ref_rope(k, cos, sin);
      ks[i] = ks[i].defined() ? at::cat({ks[i], k}, 2) : k;  // grows every token
      vs[i] = vs[i].defined() ? at::cat({vs[i], v}, 2) : v;
      at::Tensor kk = ks[i].repeat_interleave(G, 1), vv = vs[i].repeat_interleave(G, 1);
      at::Tensor s = at::matmul(q, kk.transpose(2, 3)) / std::sqrt(static_cast<double>(D));
      if (L > 1) {
        const int64_t K = kk.size(2);
        s = s.masked_fill(at::ones({L, K}, at::kBool).tril(K - L).logical_not(), -INFINITY);
      }
      at::Tensor o = at::matmul(at::softmax(s, -1), vv).transpose(1, 2).reshape({1, L, H * D});
      x = x + at::linear(o, w.wo);
      h = ref_rms(x, w.n2, c.rms_norm_eps);
      x = x + at::linear(at::silu(at::linear(h, w.wg)) * at::linear(h, w.wu), w.wd);
    }
    x = ref_rms(x.narrow(1, L - 1, 1), fnorm, c.rms_norm_eps);
    return at::linear(x, head).reshape({-1});
  };

  Timing t;
  double best_prefill = 1e30, best_decode = 1e30;
  for (int r = 0; r < reps; ++r) {
    c10::InferenceMode guard;
    for (auto& k : ks) k = at::Tensor();
    for (auto& v : vs) v = at::Tensor();
    auto t0 = Clock::now();
    at::Tensor logits = forward(prompt, 0);
    best_prefill = std::min(best_prefill, seconds_since(t0));
    std::vector<int64_t> toks;
    t0 = Clock::now();
    for (int64_t i = 0; i < n_new; ++i) {
      const int64_t next = logits.argmax().item<int64_t>();
      toks.push_back(next);
      if (i + 1 == n_new) break;
      logits = forward(at::full({1, 1}, next, at::kLong), prompt.size(1) + i);
    }
    best_decode = std::min(best_decode, seconds_since(t0));
    t.tokens = toks;
  }
  t.prefill_tok_s = prompt.size(1) / best_prefill;
  t.decode_tok_s = (n_new - 1) / best_decode;
  return t;
}

int64_t arg(int argc, char** argv, const char* name, int64_t fallback) {
  for (int i = 1; i + 1 < argc; ++i)
    if (std::strcmp(argv[i], name) == 0) return std::atoll(argv[i + 1]);
  return fallback;
}

bool flag(int argc, char** argv, const char* name) {
  for (int i = 1; i < argc; ++i)
    if (std::strcmp(argv[i], name) == 0) return true;
  return false;
}

std::string load_average() {
  std::FILE* f = std::fopen("/proc/loadavg", "r");
  char buf[64] = {0};
  if (f) {
    if (!std::fgets(buf, sizeof buf, f)) buf[0] = 0;
    std::fclose(f);
  }
  std::string s(buf);
  return s.substr(0, s.find(' ', s.find(' ', s.find(' ') + 1) + 1));
}

// Decoding reads every weight once per token (the embedding table only one row of), so the
// time to stream them all is a ceiling for decode tokens/s on this machine right now.
double weight_stream_ceiling(LlamaForCausalLM& model) {
  std::vector<at::Tensor> ws;
  for (const auto& p : model->named_parameters())
    if (p.key().find("embed_tokens") == std::string::npos) ws.push_back(p.value());
  c10::InferenceMode guard;
  double best = 1e30;
  for (int r = 0; r < 5; ++r) {
    const auto t0 = Clock::now();
    for (const at::Tensor& w : ws) w.sum();
    best = std::min(best, seconds_since(t0));
  }
  return 1.0 / best;
}

}  // namespace

int main(int argc, char** argv) {
  ensure_passive_openmp(argc, argv);
  set_threads(static_cast<int>(arg(argc, argv, "--threads", 0)));
  const int64_t prompt_len = arg(argc, argv, "--prompt", 512);
  const int64_t n_new = arg(argc, argv, "--tokens", 128);
  const int reps = static_cast<int>(arg(argc, argv, "--reps", 3));
  const bool with_reference = !flag(argc, argv, "--no-reference");
  if (flag(argc, argv, "--no-kernels")) set_llama_kernels({false, false});

  const LlamaConfig cfg = bench_config();
  LlamaForCausalLM model(cfg);
  model->init_weights(1234);
  model->eval();
  int64_t params = 0;
  for (const auto& p : model->parameters()) params += p.numel();
  at::Generator gen = at::detail::createCPUGenerator(99);
  const at::Tensor prompt = at::randint(3, cfg.vocab_size, {1, prompt_len}, gen, at::kLong);
  const LlamaKernels kernels = llama_kernels();

  std::printf("bench_llama: %.1fM parameters (hidden %lld, %lld layers, %lld heads, %lld KV heads, vocab %lld), F32\n",
              params / 1e6, (long long)cfg.hidden_size, (long long)cfg.num_hidden_layers,
              (long long)cfg.num_attention_heads, (long long)cfg.num_key_value_heads, (long long)cfg.vocab_size);
  std::printf("LibTorch %s, %d threads, OMP_WAIT_POLICY=%s, fused SDPA: %s, oneDNN SGEMM: %s, AVX2 kernels: %s\n",
              torch_version_string(), get_threads(),
              std::getenv("OMP_WAIT_POLICY") ? std::getenv("OMP_WAIT_POLICY") : "(unset)",
              IRIS_HAS_FUSED_SDPA ? "yes" : "no (LibTorch 1.13)", kernels.onednn_gemm ? "yes" : "no",
              kernels.avx2 ? "yes" : "no");
  std::printf("prompt %lld tokens, decode %lld tokens, best of %d; load average %s\n\n", (long long)prompt_len,
              (long long)n_new, reps, load_average().c_str());

  const double ceiling_before = weight_stream_ceiling(model);
  const Timing fast = run_iris(model, prompt, n_new, reps, false);
  const double rss_fast = peak_rss_mb();
  const Timing expl = run_iris(model, prompt, n_new, reps, true);
  const double rss_explicit = peak_rss_mb();
  Timing ref;
  if (with_reference) ref = run_reference(model, prompt, n_new, reps);
  const double ceiling = std::max(ceiling_before, weight_stream_ceiling(model));

  auto row = [&](const char* name, const Timing& t) {
    std::printf("%-34s prefill %8.1f tok/s   decode %7.2f tok/s", name, t.prefill_tok_s, t.decode_tok_s);
    if (with_reference && ref.decode_tok_s > 0)
      std::printf("   (x%.2f / x%.2f vs reference)", t.prefill_tok_s / ref.prefill_tok_s, t.decode_tok_s / ref.decode_tok_s);
    std::printf("\n");
  };
  row("iris fast path (no hooks)", fast);
  row("iris explicit path (hookable)", expl);
  if (with_reference) row("reference (cat per token)", ref);
  std::printf("\nweight streaming ceiling (best of before/after the runs): %.1f tok/s; decode fast path at %.0f%%\n",
              ceiling, 100.0 * fast.decode_tok_s / ceiling);
  std::printf("greedy tokens: explicit %s fast", expl.tokens == fast.tokens ? "==" : "!=");
  if (with_reference) std::printf(", reference %s fast", ref.tokens == fast.tokens ? "==" : "!=");
  std::printf("\npeak RSS: %.0f MB after the fast path, %.0f MB after the explicit path", rss_fast, rss_explicit);
  if (with_reference) std::printf(", %.0f MB after the reference", peak_rss_mb());
  std::printf("\nload average at the end %s\n", load_average().c_str());
  std::printf("targets: decode >= 60 tok/s, prefill >= 550 tok/s, peak RSS <= 700 MB\n");
  return 0;
}
