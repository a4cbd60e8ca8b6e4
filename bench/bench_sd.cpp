// SD1.5-shaped benchmark: UNet step, VAE decode and whole-txt2img peak RSS on the CPU, each
// next to a plain LibTorch reference measured in the same run (the ratio is the figure).
//
// Models are built from the real configs (UNetConfig::sd15, VaeConfig::sd, CLIP ViT-L text),
// given random weights, written to temporary F16 safetensors by a child process and loaded
// back through iris::load_state_dict, so loading is part of the measurement.
//
// The reference path is a plain re-implementation over the same parameters, written the way a
// LibTorch user would write it from the diffusers code: NCHW tensors, out-of-place ops,
// attention that materialises the whole [B*H, L, L] score matrix (matmul, softmax, matmul), and
// a loader that copies every tensor from the mapping and keeps the file mapped while it loads.
//
//   bench_sd [--steps N] [--runs N] [--skip-reference] [--only unet|vae|rss] [--weights DIR]
//            [--threads N]
//   bench_sd --only adapters [--runs N]   per-step cost of the IP / style / skeleton streams
//
// Each piece takes minutes on 2 cores. Peak RSS is measured in child processes (ru_maxrss is a
// high-water mark of the whole process), one per path.
#include <malloc.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <iomanip>
#include <iostream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <torch/nn/module.h>
#include <torch/utils.h>

#include "core/attention.h"
#include "core/json_util.h"
#include "core/runtime.h"
#include "core/runtime_env.h"
#include "core/safetensors.h"
#include "core/state_dict.h"
#include "core/tensor_io.h"
#include "diffusion/clip.h"
#include "diffusion/unet.h"
#include "diffusion/vae.h"
#include "adapters/ip_adapter.h"
#include "adapters/skeleton_adapter.h"
#include "adapters/style_adapter.h"
#include "world/skeleton.h"

namespace {

using iris::Json;
namespace nn = torch::nn;

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// ---- memory ------------------------------------------------------------------------------------

// Allocator settings. On this VM a page fault costs ~30 us: touching 256 MB of fresh 4 KB pages
// takes 1.7-2.7 s, rewriting them 0.02 s. glibc serves blocks over 32 MB (and, by its dynamic
// threshold, smaller ones) with fresh mmap()s and unmaps them on free, so every big activation
// allocated anew pays that again, and so does building a model (4 GB of parameters).
//   thp:  GLIBC_TUNABLES=glibc.malloc.hugetlb=1 (set before the process starts: we re-exec):
//         malloc asks for transparent huge pages (512x fewer faults; THP is in madvise mode).
//   keep: mmap off and no trimming: freed blocks stay in the heap and are reused.
// The iris CLI should do the same at start-up (see the report); "plain" is glibc's default.
bool malloc_thp(const std::string& mode) { return mode == "thp" || mode == "thp-keep"; }
bool malloc_keep(const std::string& mode) { return mode == "keep" || mode == "thp-keep"; }


constexpr const char* kThpTunable = "glibc.malloc.hugetlb=1";

// The environment for a child with the given malloc mode (GLIBC_TUNABLES added or removed).
std::vector<std::string> child_environment(const std::string& mode) {
  std::vector<std::string> env;
  for (char** e = environ; *e; ++e)
    if (std::strncmp(*e, "GLIBC_TUNABLES=", 15) != 0) env.emplace_back(*e);
  if (malloc_thp(mode)) env.push_back(std::string("GLIBC_TUNABLES=") + kThpTunable);
  return env;
}

// Re-executes this program with the tunable when `mode` wants THP and it is not in effect.
void ensure_malloc_environment(const std::string& mode, char** argv) {
  const char* t = std::getenv("GLIBC_TUNABLES");
  const bool has = t && std::strstr(t, kThpTunable);
  if (malloc_thp(mode) == has) return;
  std::vector<std::string> env = child_environment(mode);
  if (!std::getenv("OMP_WAIT_POLICY")) env.emplace_back("OMP_WAIT_POLICY=PASSIVE");  // saves a second exec
  std::vector<char*> envp;
  for (auto& e : env) envp.push_back(const_cast<char*>(e.c_str()));
  envp.push_back(nullptr);
  execve("/proc/self/exe", argv, envp.data());
}

// kB value of a /proc/self/status line ("VmRSS", "VmHWM").
long proc_status_kb(const char* key) {
  std::ifstream f("/proc/self/status");
  std::string line;
  const size_t n = std::strlen(key);
  while (std::getline(f, line))
    if (line.compare(0, n, key) == 0 && line.size() > n && line[n] == ':') return std::atol(line.c_str() + n + 1);
  return -1;
}

long max_rss_kb() {
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss;
}

double gib(long kb) { return kb / (1024.0 * 1024.0); }

// ---- configs -----------------------------------------------------------------------------------

iris::ClipTextConfig clip_vit_l_text() {
  // CLIP ViT-L/14 text tower, as in SD1.5's text_encoder/config.json.
  Json j{{"vocab_size", 49408},       {"hidden_size", 768},          {"intermediate_size", 3072},
         {"num_hidden_layers", 12},   {"num_attention_heads", 12},   {"max_position_embeddings", 77},
         {"hidden_act", "quick_gelu"}, {"layer_norm_eps", 1e-5},     {"projection_dim", 768},
         {"bos_token_id", 0},         {"eos_token_id", 2},           {"pad_token_id", 1}};
  return iris::ClipTextConfig::from_json(j, "CLIP ViT-L/14 text (bench)");
}

// ---- weights -----------------------------------------------------------------------------------

// Streams a module's tensors into a safetensors file: floating tensors as F16, others as they
// are. One tensor converted at a time, so the writer holds no second copy of the model.
void write_f16_safetensors(nn::Module& m, const std::string& path) {
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (auto& p : m.named_parameters(true)) tensors.emplace_back(p.key(), p.value());
  for (auto& b : m.named_buffers(true)) tensors.emplace_back(b.key(), b.value());
  std::sort(tensors.begin(), tensors.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  Json header = Json::object();
  uint64_t offset = 0;
  for (auto& [name, t] : tensors) {
    const at::ScalarType st = at::isFloatingType(t.scalar_type()) ? at::kHalf : t.scalar_type();
    const uint64_t nbytes = static_cast<uint64_t>(t.numel()) * c10::elementSize(st);
    header[name] = Json{{"dtype", iris::dtype_name(iris::dtype_of(st))},
                        {"shape", t.sizes().vec()},
                        {"data_offsets", {offset, offset + nbytes}}};
    offset += nbytes;
  }
  std::string hs = header.dump();
  while (hs.size() % 8) hs.push_back(' ');
  const std::string tmp = path + ".tmp";
  FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) throw std::runtime_error(tmp + ": cannot write");
  const uint64_t n = hs.size();
  unsigned char len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(n >> (8 * i));
  bool ok = std::fwrite(len, 1, 8, f) == 8 && std::fwrite(hs.data(), 1, hs.size(), f) == hs.size();
  for (auto& [name, t] : tensors) {
    at::Tensor c = at::isFloatingType(t.scalar_type()) ? t.detach().to(at::kHalf).contiguous() : t.detach().contiguous();
    const size_t nb = c.numel() * c.element_size();
    ok = ok && (nb == 0 || std::fwrite(c.data_ptr(), 1, nb, f) == nb);
  }
  ok = (std::fclose(f) == 0) && ok;
  if (!ok || std::rename(tmp.c_str(), path.c_str()) != 0) throw std::runtime_error(path + ": write failed");
}

bool file_exists(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0;
}

void write_weights(const std::string& dir) {
  torch::NoGradGuard ng;
  at::manual_seed(1234);
  if (!file_exists(dir + "/unet.safetensors")) {
    iris::UNet2DCondition u(iris::UNetConfig::sd15());
    write_f16_safetensors(*u, dir + "/unet.safetensors");
  }
  if (!file_exists(dir + "/vae.safetensors")) {
    iris::AutoencoderKL v(iris::VaeConfig::sd());
    write_f16_safetensors(*v, dir + "/vae.safetensors");
  }
  if (!file_exists(dir + "/text_encoder.safetensors")) {
    iris::ClipTextModel t(clip_vit_l_text(), false);
    write_f16_safetensors(*t, dir + "/text_encoder.safetensors");
  }
}

// The plain loader: every tensor copied (and converted) from the mapping, the file kept mapped
// until the whole module is loaded.
void load_plain(nn::Module& m, const std::string& path) {
  torch::NoGradGuard ng;
  iris::TensorStore store = iris::TensorStore::open(path);
  for (auto& p : m.named_parameters(true)) p.value().copy_(iris::read_tensor(store, p.key()));
  for (auto& b : m.named_buffers(true))
    if (store.contains(b.key())) b.value().copy_(iris::read_tensor(store, b.key()));
}

void load_iris(nn::Module& m, const std::string& path) {
  iris::TensorStore store = iris::TensorStore::open(path);
  iris::load_state_dict(m, store, iris::RenameTable());
}

// ---- the plain reference forward passes --------------------------------------------------------

// Functional re-implementation over a module's parameters (looked up by their diffusers names).
class Plain {
 public:
  explicit Plain(const nn::Module& m) : params_(m.named_parameters(true)) {}

  const at::Tensor& w(const std::string& name) const {
    const at::Tensor* t = params_.find(name);
    if (!t) throw std::runtime_error("reference: no parameter " + name);
    return *t;
  }
  at::Tensor opt(const std::string& name) const {
    const at::Tensor* t = params_.find(name);
    return t ? *t : at::Tensor();
  }
  bool has(const std::string& name) const { return params_.find(name) != nullptr; }

  at::Tensor conv(const std::string& p, const at::Tensor& x, int64_t stride = 1, int64_t pad = -1) const {
    const at::Tensor& k = w(p + ".weight");
    return at::conv2d(x, k, opt(p + ".bias"), stride, pad < 0 ? k.size(-1) / 2 : pad);
  }
  at::Tensor gn(const std::string& p, const at::Tensor& x, int64_t groups, double eps) const {
    return at::group_norm(x, groups, w(p + ".weight"), w(p + ".bias"), eps);
  }
  at::Tensor lin(const std::string& p, const at::Tensor& x) const {
    return at::linear(x, w(p + ".weight"), opt(p + ".bias"));
  }
  at::Tensor ln(const std::string& p, const at::Tensor& x) const {
    return at::layer_norm(x, {x.size(-1)}, w(p + ".weight"), w(p + ".bias"), 1e-5);
  }
  at::Tensor resnet(const std::string& p, const at::Tensor& x, const at::Tensor& temb, int64_t groups, double eps,
                    double out_scale = 1.0) const {
    at::Tensor h = conv(p + ".conv1", at::silu(gn(p + ".norm1", x, groups, eps)));
    if (temb.defined()) h = h + lin(p + ".time_emb_proj", at::silu(temb)).unsqueeze(-1).unsqueeze(-1);
    h = conv(p + ".conv2", at::silu(gn(p + ".norm2", h, groups, eps)));
    at::Tensor skip = has(p + ".conv_shortcut.weight") ? conv(p + ".conv_shortcut", x) : x;
    at::Tensor y = skip + h;
    return out_scale == 1.0 ? y : y / out_scale;
  }
  // The whole score matrix, as diffusers' AttnProcessor does.
  static at::Tensor sdpa(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
    at::Tensor s = at::matmul(q, k.transpose(-2, -1)) * (1.0 / std::sqrt(static_cast<double>(q.size(-1))));
    return at::matmul(at::softmax(s, -1), v);
  }
  static at::Tensor heads(const at::Tensor& x, int64_t h) {
    return x.view({x.size(0), x.size(1), h, -1}).transpose(1, 2);
  }
  static at::Tensor merge(const at::Tensor& x) { return x.transpose(1, 2).reshape({x.size(0), x.size(2), -1}); }
  at::Tensor attn(const std::string& p, const at::Tensor& x, const at::Tensor& ctx, int64_t nh) const {
    const at::Tensor& c = ctx.defined() ? ctx : x;
    at::Tensor o = sdpa(heads(lin(p + ".to_q", x), nh), heads(lin(p + ".to_k", c), nh), heads(lin(p + ".to_v", c), nh));
    return lin(p + ".to_out.0", merge(o));
  }
  at::Tensor transformer(const std::string& p, const at::Tensor& x, const at::Tensor& ctx, int64_t nh, int64_t layers,
                         int64_t groups, bool linear_proj) const {
    const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
    at::Tensor h = gn(p + ".norm", x, groups, 1e-6);
    if (linear_proj) h = lin(p + ".proj_in", h.permute({0, 2, 3, 1}).reshape({B, H * W, C}));
    else h = conv(p + ".proj_in", h).permute({0, 2, 3, 1}).reshape({B, H * W, C});
    for (int64_t l = 0; l < layers; ++l) {
      const std::string b = p + ".transformer_blocks." + std::to_string(l);
      h = h + attn(b + ".attn1", ln(b + ".norm1", h), at::Tensor(), nh);
      h = h + attn(b + ".attn2", ln(b + ".norm2", h), ctx, nh);
      auto parts = lin(b + ".ff.net.0.proj", ln(b + ".norm3", h)).chunk(2, -1);
      h = h + lin(b + ".ff.net.2", parts[0] * at::gelu(parts[1]));
    }
    if (linear_proj) h = lin(p + ".proj_out", h).reshape({B, H, W, C}).permute({0, 3, 1, 2});
    else h = conv(p + ".proj_out", h.reshape({B, H, W, C}).permute({0, 3, 1, 2}).contiguous());
    return h + x;
  }

 private:
  torch::OrderedDict<std::string, at::Tensor> params_;
};

// UNet2DConditionModel.forward (SD1.x layouts: square latents that divide by 8).
at::Tensor plain_unet(const iris::UNet2DConditionImpl& unet, const Plain& P, const at::Tensor& sample,
                      const at::Tensor& t, const at::Tensor& ctx) {
  const iris::UNetConfig& c = unet.config();
  const auto& boc = c.block_out_channels;
  const size_t n = boc.size();
  const int64_t G = c.norm_num_groups;
  const double eps = c.norm_eps;
  at::Tensor temb = iris::timestep_embedding(t.to(at::kFloat).expand({sample.size(0)}), boc[0], c.flip_sin_to_cos,
                                             c.freq_shift);
  temb = P.lin("time_embedding.linear_2", at::silu(P.lin("time_embedding.linear_1", temb)));
  at::Tensor x = P.conv("conv_in", sample);
  std::vector<at::Tensor> skips{x};
  for (size_t i = 0; i < n; ++i) {
    const std::string p = "down_blocks." + std::to_string(i);
    const bool cross = c.down_block_types[i].find("CrossAttn") != std::string::npos;
    for (int64_t l = 0; l < c.layers_per_block[i]; ++l) {
      x = P.resnet(p + ".resnets." + std::to_string(l), x, temb, G, eps);
      if (cross)
        x = P.transformer(p + ".attentions." + std::to_string(l), x, ctx, c.num_attention_heads[i],
                          c.transformer_layers_per_block[i], G, c.use_linear_projection);
      skips.push_back(x);
    }
    if (i + 1 < n) {
      x = P.conv(p + ".downsamplers.0.conv", x, 2, c.downsample_padding);
      skips.push_back(x);
    }
  }
  x = P.resnet("mid_block.resnets.0", x, temb, G, eps, c.mid_block_scale_factor);
  x = P.transformer("mid_block.attentions.0", x, ctx, c.num_attention_heads[n - 1], c.transformer_layers_per_block[n - 1],
                    G, c.use_linear_projection);
  x = P.resnet("mid_block.resnets.1", x, temb, G, eps, c.mid_block_scale_factor);
  for (size_t i = 0; i < n; ++i) {
    const size_t r = n - 1 - i;
    const std::string p = "up_blocks." + std::to_string(i);
    const bool cross = c.up_block_types[i].find("CrossAttn") != std::string::npos;
    for (int64_t l = 0; l < c.layers_per_block[r] + 1; ++l) {
      x = at::cat({x, skips.back()}, 1);
      skips.pop_back();
      x = P.resnet(p + ".resnets." + std::to_string(l), x, temb, G, eps);
      if (cross)
        x = P.transformer(p + ".attentions." + std::to_string(l), x, ctx, c.num_attention_heads[r],
                          c.transformer_layers_per_block[r], G, c.use_linear_projection);
    }
    if (i + 1 < n)
      x = P.conv(p + ".upsamplers.0.conv",
                 at::upsample_nearest2d(x, std::vector<int64_t>{x.size(2) * 2, x.size(3) * 2}));
  }
  return P.conv("conv_out", at::silu(P.gn("conv_norm_out", x, G, eps)));
}

// AutoencoderKL.decode.
at::Tensor plain_vae_decode(const iris::AutoencoderKLImpl& vae, const Plain& P, const at::Tensor& z) {
  const iris::VaeConfig& c = vae.config();
  const int64_t G = c.norm_num_groups;
  const size_t n = c.block_out_channels.size();
  at::Tensor x = c.use_post_quant_conv ? P.conv("post_quant_conv", z) : z;
  x = P.conv("decoder.conv_in", x);
  x = P.resnet("decoder.mid_block.resnets.0", x, {}, G, 1e-6);
  if (c.mid_block_add_attention) {
    const std::string p = "decoder.mid_block.attentions.0";
    const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
    at::Tensor h = P.gn(p + ".group_norm", x, G, 1e-6).view({B, C, H * W}).transpose(1, 2);
    h = P.attn(p, h, at::Tensor(), 1);
    x = h.transpose(1, 2).reshape({B, C, H, W}) + x;
  }
  x = P.resnet("decoder.mid_block.resnets.1", x, {}, G, 1e-6);
  for (size_t i = 0; i < n; ++i) {
    const std::string p = "decoder.up_blocks." + std::to_string(i);
    for (int64_t l = 0; l < c.layers_per_block + 1; ++l) x = P.resnet(p + ".resnets." + std::to_string(l), x, {}, G, 1e-6);
    if (i + 1 < n)
      x = P.conv(p + ".upsamplers.0.conv",
                 at::upsample_nearest2d(x, std::vector<int64_t>{x.size(2) * 2, x.size(3) * 2}));
  }
  return P.conv("decoder.conv_out", at::silu(P.gn("decoder.conv_norm_out", x, G, 1e-6)));
}

// ---- child processes ---------------------------------------------------------------------------

std::string g_self_threads;  // "--threads N" passed on to children

int run_child(const std::vector<std::string>& args, const std::string& malloc_mode) {
  std::vector<std::string> all{"/proc/self/exe"};
  all.insert(all.end(), args.begin(), args.end());
  all.push_back("--malloc");
  all.push_back(malloc_mode);
  std::vector<char*> argv, envp;
  for (auto& a : all) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  const std::vector<std::string> env = child_environment(malloc_mode);
  for (auto& e : env) envp.push_back(const_cast<char*>(e.c_str()));
  envp.push_back(nullptr);
  std::cout.flush();
  pid_t pid = fork();
  if (pid < 0) throw std::runtime_error("fork failed");
  if (pid == 0) {
    execve("/proc/self/exe", argv.data(), envp.data());
    _exit(127);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

std::map<std::string, double> read_results(const std::string& path) {
  std::map<std::string, double> r;
  std::ifstream f(path);
  std::string k;
  double v;
  while (f >> k >> v) r[k] = v;
  return r;
}

// A txt2img-shaped run in this process: load the three models, encode a prompt pair, N CFG
// UNet steps on a [1, 4, 64, 64] latent, decode. Writes "key value" lines to `out`.
void txt2img_child(const std::string& dir, bool reference, int steps, const std::string& out) {
  torch::NoGradGuard ng;
  std::map<std::string, double> r;
  const double t0 = now_s();
  auto load = reference ? load_plain : load_iris;
  iris::UNet2DCondition unet(iris::UNetConfig::sd15());
  load(*unet, dir + "/unet.safetensors");
  iris::AutoencoderKL vae(iris::VaeConfig::sd());
  load(*vae, dir + "/vae.safetensors");
  iris::ClipTextModel text(clip_vit_l_text(), false);
  load(*text, dir + "/text_encoder.safetensors");
  unet->eval();
  vae->eval();
  text->eval();
  r["load_s"] = now_s() - t0;
  r["rss_after_load_kb"] = proc_status_kb("VmRSS");
  r["hwm_after_load_kb"] = proc_status_kb("VmHWM");

  at::manual_seed(7);
  at::Tensor ids = at::randint(0, 49407, {2, 77}, at::kLong);
  double t = now_s();
  at::Tensor ctx = text->forward(ids).last_hidden_state;  // [uncond; cond]
  r["text_s"] = now_s() - t;
  // iris frees each part once its work is done, as `iris render` does (SdModel::release_after_use);
  // the reference keeps all three resident, as diffusers' pipeline does.
  if (!reference) {
    text = nullptr;
    iris::release_free_memory();
  }
  at::Tensor latents = at::randn({1, 4, 64, 64});
  std::unique_ptr<Plain> pu, pv;
  if (reference) {
    pu = std::make_unique<Plain>(*unet);
    pv = std::make_unique<Plain>(*vae);
  }
  t = now_s();
  for (int s = 0; s < steps; ++s) {
    at::Tensor x = at::cat({latents, latents});
    at::Tensor ts = at::full({1}, 999.0 - 500.0 * s / std::max(1, steps));
    at::Tensor eps = reference ? plain_unet(*unet, *pu, x, ts, ctx) : unet->forward(x, ts, ctx);
    auto e = eps.chunk(2);
    latents = latents - 0.1 * (e[0] + 7.5 * (e[1] - e[0]));
  }
  r["unet_s_per_step"] = (now_s() - t) / std::max(1, steps);
  r["hwm_after_unet_kb"] = proc_status_kb("VmHWM");
  if (!reference) {
    unet = nullptr;
    iris::release_free_memory();
  }
  t = now_s();
  at::Tensor z = latents / 0.18215;
  at::Tensor img = reference ? plain_vae_decode(*vae, *pv, z) : vae->decode(z);
  img = ((img.clamp(-1, 1) + 1) * 127.5).round().to(at::kByte);
  r["decode_s"] = now_s() - t;
  r["total_s"] = now_s() - t0;
  r["hwm_kb"] = proc_status_kb("VmHWM");
  r["maxrss_kb"] = max_rss_kb();
  r["finite"] = static_cast<double>(at::isfinite(latents).all().item<bool>());
  std::ofstream f(out);
  for (auto& [k, v] : r) f << k << ' ' << std::setprecision(10) << v << '\n';
}

// ---- pieces ------------------------------------------------------------------------------------

struct Row {
  std::string what, unit;
  double reference = NAN, iris = NAN;
  std::string note;
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? NAN : v[v.size() / 2];
}

std::string fmt(double v, int prec = 2) {
  if (std::isnan(v)) return "-";
  std::ostringstream s;
  s << std::fixed << std::setprecision(prec) << v;
  return s.str();
}

void loadavg_line(const char* when) {
  double l[3] = {0, 0, 0};
  if (getloadavg(l, 3) == 3)
    std::cout << "[load average " << when << ": " << fmt(l[0]) << " " << fmt(l[1]) << " " << fmt(l[2]) << "]\n";
}

// Alternates reference and optimised runs (so background load hits both alike); the first
// run of each is a warm-up when runs > 1.
void time_pair(const char* label, int runs, bool skip_ref, const std::function<at::Tensor()>& iris_fn,
               const std::function<at::Tensor()>& ref_fn, Row& row) {
  std::vector<double> ti, tr;
  at::Tensor yi, yr;
  for (int k = 0; k < runs; ++k) {
    double t = now_s();
    yi = iris_fn();
    ti.push_back(now_s() - t);
    std::cout << "  " << label << " iris run " << k + 1 << ": " << fmt(ti.back()) << " s" << std::endl;
    if (!skip_ref) {
      yi = yi.contiguous();
      t = now_s();
      yr = ref_fn();
      tr.push_back(now_s() - t);
      std::cout << "  " << label << " reference run " << k + 1 << ": " << fmt(tr.back()) << " s" << std::endl;
    }
  }
  auto pick = [&](std::vector<double> v) {
    if (v.size() > 1) v.erase(v.begin());  // warm-up
    return median(v);
  };
  row.iris = pick(ti);
  if (!skip_ref) {
    row.reference = pick(tr);
    const double diff = (yi - yr).abs().max().item<double>();
    const double scale = yr.abs().max().item<double>();
    row.note = "max |iris - reference| = " + fmt(diff * 1e6, 1) + "e-6 (|ref| max " + fmt(scale, 1) + ")";
  }
}

// Per-step cost of the adapter streams (issue 4): the SD1.5-shaped UNet at 512x512 (64x64
// latent, batch 2 = CFG, 77 text tokens) plain and with each stream attached as inference
// attaches it, the runs interleaved (plain, IP, IP-Plus, style, skeleton, all) so that machine
// noise hits every configuration alike. The tokens are made once per generation, not per step,
// so only the attention streams are timed. Random weights (speed does not depend on them).
void bench_adapter_streams(int runs) {
  using namespace iris;
  iris::UNet2DCondition unet(iris::UNetConfig::sd15());
  unet->eval();
  at::manual_seed(11);
  const at::Tensor x = at::randn({2, 4, 64, 64}), ts = at::full({2}, 500.0), ctx = at::randn({2, 77, 768});

  IpAdapterConfig base;
  for (const auto& [path, attn] : unet->cross_attention_layers()) base.layer_dims.push_back(attn->to_k->weight.size(0));
  IpAdapter ip(base);
  IpAdapterConfig plus_cfg = base;
  plus_cfg.variant = IpVariant::Plus;
  plus_cfg.tokens = 16;
  IpAdapter ip_plus(plus_cfg);
  const at::Tensor ip_tokens = at::randn({2, 4, 768}), plus_tokens = at::randn({2, 16, 768});
  StyleAdapter style = make_style_adapter(unet, {"bench"});
  const at::Tensor style_tokens = style->style_tokens(style->bank.index_select(0, at::zeros({2}, at::kLong)));
  SkeletonAdapter sk = make_skeleton_adapter(unet, default_joint_types());
  const SkeletonInputs in = skeleton_inputs({world::default_skeleton_2d(), world::default_skeleton_2d()}, sk->config());
  const at::Tensor sk_tokens = sk->encoder->forward(in);
  const std::vector<bool> cond_row{false, true};  // CFG: the negative row has no style / skeleton

  auto detach_all = [&] {
    detach_streams(unet, "ip_adapter");
    detach_style(unet);
    detach_skeleton(unet);
  };
  struct Config {
    const char* name;
    std::function<void()> attach;
    std::vector<double> times;
  };
  std::vector<Config> configs = {
      {"plain UNet step", [] {}, {}},
      {"+ IP-Adapter (4 tokens, every attn2)", [&] { attach_ip_adapter(ip, unet, ip_tokens, 1.0); }, {}},
      {"+ IP-Adapter Plus (16 tokens)", [&] { attach_ip_adapter(ip_plus, unet, plus_tokens, 1.0); }, {}},
      {"+ style (4 tokens, decoder attn2)", [&] { attach_style(style, unet, style_tokens, 1.0, cond_row); }, {}},
      {"+ skeleton (joint tokens, every attn2)",
       [&] { attach_skeleton(sk, unet, sk_tokens, in.valid, 1.0, cond_row); }, {}},
      {"+ IP + style + skeleton",
       [&] {
         attach_ip_adapter(ip, unet, ip_tokens, 1.0);
         attach_style(style, unet, style_tokens, 1.0, cond_row);
         attach_skeleton(sk, unet, sk_tokens, in.valid, 1.0, cond_row);
       },
       {}}};
  std::cout << "adapter streams on the SD1.5 UNet, 64x64 latent, batch 2, " << runs << " interleaved rounds"
            << std::endl;
  for (int round = 0; round <= runs; ++round) {  // round 0 warms up every configuration
    for (Config& c : configs) {
      detach_all();
      c.attach();
      const double t = now_s();
      const at::Tensor y = unet->forward(x, ts, ctx);
      const double dt = now_s() - t;
      if (!at::isfinite(y).all().item<bool>()) throw std::runtime_error(std::string(c.name) + ": non-finite output");
      if (round > 0) c.times.push_back(dt);
      std::cout << "  round " << round << (round == 0 ? " (warm-up)" : "") << ": " << c.name << " " << fmt(dt) << " s"
                << std::endl;
    }
  }
  detach_all();
  const double plain = median(configs[0].times);
  std::cout << "\n| configuration | s/step (median) | vs plain |\n|---|---|---|\n";
  for (const Config& c : configs)
    std::cout << "| " << c.name << " | " << fmt(median(c.times)) << " | " << fmt(median(c.times) / plain, 3) << "x |\n";
}

}  // namespace

int main(int argc, char** argv) {
  int steps = 2, runs = 2, threads = 0;
  bool skip_ref = false;
  std::string only, weights_dir, child_mode, child_out, malloc_mode = "thp-keep";
  for (int i = 1; i + 1 < argc; ++i)
    if (std::string(argv[i]) == "--malloc") malloc_mode = argv[i + 1];
  if (malloc_mode != "keep" && malloc_mode != "plain" && malloc_mode != "thp" && malloc_mode != "thp-keep") {
    std::cerr << "--malloc takes thp-keep, thp, keep or plain\n";
    return 2;
  }
  ensure_malloc_environment(malloc_mode, argv);
  iris::ensure_passive_openmp(argc, argv);
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) throw std::runtime_error(a + " needs a value");
      return argv[++i];
    };
    if (a == "--steps") steps = std::stoi(next());
    else if (a == "--runs") runs = std::stoi(next());
    else if (a == "--threads") threads = std::stoi(next());
    else if (a == "--skip-reference") skip_ref = true;
    else if (a == "--only") only = next();
    else if (a == "--weights") weights_dir = next();
    else if (a == "--malloc") malloc_mode = next();
    else if (a == "--child-write-weights") child_mode = "write";
    else if (a == "--child-txt2img") child_mode = next();  // iris | reference
    else if (a == "--child-out") child_out = next();
    else if (a == "-h" || a == "--help") {
      std::cout << "bench_sd [--steps N] [--runs N] [--skip-reference] [--only unet|vae|rss|adapters] [--weights DIR] "
                   "[--threads N]\n"
                   "  --steps N   UNet steps in the txt2img RSS run (default 2)\n"
                   "  --runs N    timed runs per path for unet/vae; the first is a warm-up when N > 1 (default 2)\n"
                   "  --weights DIR  keep/reuse the random SD1.5-shaped weights there (default: a temp dir, removed)\n"
                   "  --malloc thp-keep|thp|keep|plain  allocator settings (default thp-keep: huge pages, freed\n"
                   "              memory kept for reuse); the plain reference txt2img child always runs with\n"
                   "              glibc's defaults\n";
      return 0;
    } else {
      std::cerr << "unknown argument " << a << "\n";
      return 2;
    }
  }
  if (!only.empty() && only != "unet" && only != "vae" && only != "rss" && only != "adapters") {
    std::cerr << "--only takes unet, vae, rss or adapters\n";
    return 2;
  }
  if (malloc_keep(malloc_mode)) iris::keep_freed_memory();
  iris::set_threads(threads);
  if (only == "adapters") {  // not part of the default run: a separate measurement (issue 4)
    try {
      torch::NoGradGuard ng;
      loadavg_line("at start");
      bench_adapter_streams(std::max(1, runs));
      loadavg_line("at end");
    } catch (const std::exception& e) {
      std::cerr << "bench_sd: " << e.what() << "\n";
      return 1;
    }
    return 0;
  }
  std::vector<std::string> pass{"--threads", std::to_string(threads)};
  try {
    if (child_mode == "write") {
      write_weights(weights_dir);
      return 0;
    }
    if (!child_mode.empty()) {
      txt2img_child(weights_dir, child_mode == "reference", steps, child_out);
      return 0;
    }

    bool temp_dir = weights_dir.empty();
    if (temp_dir) {
      char tmpl[] = "/tmp/iris_bench_sd_XXXXXX";
      if (!mkdtemp(tmpl)) throw std::runtime_error("mkdtemp failed");
      weights_dir = tmpl;
    } else {
      ::mkdir(weights_dir.c_str(), 0755);
    }
    std::cout << "bench_sd: SD1.5 shapes, fp32, " << iris::get_threads() << " threads, attention "
              << (iris::attention_is_fused() ? "fused" : "explicit (chunked)") << ", malloc " << malloc_mode
              << " (UNet/VAE timings: both paths in this process), weights in " << weights_dir << std::endl;
    loadavg_line("at start");
    double t = now_s();
    std::vector<std::string> wargs{"--child-write-weights", "--weights", weights_dir};
    wargs.insert(wargs.end(), pass.begin(), pass.end());
    if (run_child(wargs, malloc_mode) != 0) throw std::runtime_error("writing the weights failed");
    std::cout << "weights ready (" << fmt(now_s() - t, 1) << " s)" << std::endl;

    std::vector<Row> rows;
    torch::NoGradGuard ng;
    if (only.empty() || only == "unet") {
      t = now_s();
      iris::UNet2DCondition unet(iris::UNetConfig::sd15());
      load_iris(*unet, weights_dir + "/unet.safetensors");
      unet->eval();
      std::cout << "UNet built and loaded in " << fmt(now_s() - t, 1) << " s" << std::endl;
      at::manual_seed(11);
      at::Tensor x = at::randn({2, 4, 64, 64}), ts = at::full({2}, 500.0), ctx = at::randn({2, 77, 768});
      Plain P(*unet);
      Row row{"UNet step, 64x64 latent, batch 2", "s"};
      time_pair(
          "unet", runs, skip_ref, [&] { return unet->forward(x, ts, ctx); },
          [&] { return plain_unet(*unet, P, x, ts, ctx); }, row);
      rows.push_back(row);
    }
    if (only.empty() || only == "vae") {
      t = now_s();
      iris::AutoencoderKL vae(iris::VaeConfig::sd());
      load_iris(*vae, weights_dir + "/vae.safetensors");
      vae->eval();
      std::cout << "VAE built and loaded in " << fmt(now_s() - t, 1) << " s" << std::endl;
      at::manual_seed(12);
      at::Tensor z = at::randn({1, 4, 64, 64});
      Plain P(*vae);
      Row row{"VAE decode, 1 x 512x512", "s"};
      time_pair(
          "vae", runs, skip_ref, [&] { return vae->decode(z); }, [&] { return plain_vae_decode(*vae, P, z); }, row);
      rows.push_back(row);
    }
    if (only.empty() || only == "rss") {
      for (const char* mode : {"iris", "reference"}) {
        const bool ref = std::string(mode) == "reference";
        if (ref && skip_ref) continue;
        const std::string out = weights_dir + "/rss_" + mode + ".txt";
        std::vector<std::string> a{"--child-txt2img", mode, "--weights", weights_dir, "--steps", std::to_string(steps),
                                   "--child-out", out};
        a.insert(a.end(), pass.begin(), pass.end());
        std::cout << "txt2img run (" << mode << ", " << steps << " steps) ..." << std::endl;
        if (run_child(a, ref ? "plain" : malloc_mode) != 0) throw std::runtime_error(std::string("txt2img child (") + mode + ") failed");
        auto r = read_results(out);
        std::cout << "  " << mode << ": load " << fmt(r["load_s"], 1) << " s, text " << fmt(r["text_s"], 2)
                  << " s, UNet " << fmt(r["unet_s_per_step"], 1) << " s/step, decode " << fmt(r["decode_s"], 1)
                  << " s; RSS after load " << fmt(gib(r["rss_after_load_kb"])) << " GiB, peak after load "
                  << fmt(gib(r["hwm_after_load_kb"])) << ", after UNet " << fmt(gib(r["hwm_after_unet_kb"]))
                  << ", whole run " << fmt(gib(r["maxrss_kb"])) << " GiB" << (r["finite"] ? "" : " (NON-FINITE latents)")
                  << std::endl;
        auto set = [&](const std::string& what, const std::string& unit, double v) {
          for (auto& row : rows)
            if (row.what == what) {
              (ref ? row.reference : row.iris) = v;
              return;
            }
          Row row{what, unit};
          (ref ? row.reference : row.iris) = v;
          rows.push_back(row);
        };
        set("Peak RSS, whole 512x512 txt2img (" + std::to_string(steps) + " steps)", "GiB", gib(r["maxrss_kb"]));
        set("  of which after loading 3 models", "GiB", gib(r["hwm_after_load_kb"]));
        set("  load (build + read F16 safetensors)", "s", r["load_s"]);
      }
    }
    loadavg_line("at end");

    std::cout << "\n| measurement | unit | plain LibTorch | iris | ratio |\n|---|---|---|---|---|\n";
    for (const Row& r : rows)
      std::cout << "| " << r.what << " | " << r.unit << " | " << fmt(r.reference) << " | " << fmt(r.iris) << " | "
                << (std::isnan(r.reference) ? "-" : fmt(r.reference / r.iris) + "x") << " |\n";
    for (const Row& r : rows)
      if (!r.note.empty()) std::cout << r.what << ": " << r.note << "\n";
    if (temp_dir) {
      for (const char* f : {"unet.safetensors", "vae.safetensors", "text_encoder.safetensors", "rss_iris.txt",
                            "rss_reference.txt"})
        std::remove((weights_dir + "/" + f).c_str());
      ::rmdir(weights_dir.c_str());
    }
  } catch (const std::exception& e) {
    std::cerr << "bench_sd: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
