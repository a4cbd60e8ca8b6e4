#include "diffusion/unet_blocks.h"

#include <cmath>

#include <ATen/ATen.h>
#include <ATen/Context.h>

#include "core/attention.h"
#include "core/error.h"

namespace iris {

namespace nn = torch::nn;

at::Tensor timestep_embedding(const at::Tensor& t, int64_t dim, bool flip_sin_to_cos, double freq_shift,
                              double max_period) {
  const int64_t half = dim / 2;
  // exponent_i = -ln(max_period) * i / (half - freq_shift), computed in float32 as diffusers does.
  at::Tensor exponent = at::arange(0, half, t.options().dtype(at::kFloat)) * static_cast<float>(-std::log(max_period));
  exponent = exponent / static_cast<float>(half - freq_shift);
  at::Tensor emb = t.to(at::kFloat).unsqueeze(1) * at::exp(exponent).unsqueeze(0);  // [B, half]
  emb = flip_sin_to_cos ? at::cat({at::cos(emb), at::sin(emb)}, -1) : at::cat({at::sin(emb), at::cos(emb)}, -1);
  if (dim % 2 == 1) emb = at::constant_pad_nd(emb, {0, 1});
  return emb;
}

TimestepEmbeddingImpl::TimestepEmbeddingImpl(int64_t in, int64_t dim) {
  linear_1 = register_module("linear_1", nn::Linear(in, dim));
  linear_2 = register_module("linear_2", nn::Linear(dim, dim));
}

at::Tensor TimestepEmbeddingImpl::forward(const at::Tensor& x) { return linear_2(at::silu(linear_1(x))); }

namespace {

// ---- CPU fast paths (same values as the plain ops, to float rounding) ----------------------------
// Debian's LibTorch runs convolutions through oneDNN, which has AVX-512 kernels, and matmuls
// through OpenBLAS, whose kernels here are AVX2: a 3x3 convolution on channels-last tensors ran
// about 2x the speed of the same one on NCHW tensors, and a Linear over thousands of tokens
// about 1.5-2x faster as a 1x1 convolution. Blocks therefore compute in channels-last on the
// CPU and give their output back in the memory format of their input.

constexpr auto kChannelsLast = at::MemoryFormat::ChannelsLast;

// Inference (in-place updates and out= ops do not record autograd history).
bool inference() { return !at::GradMode::is_enabled(); }

// Float tensors on the CPU with oneDNN available, in inference.
bool onednn_ok(const at::Tensor& x) {
  return inference() && x.is_cpu() && x.scalar_type() == at::kFloat && at::hasMKLDNN() &&
         at::globalContext().userEnabledMkldnn();
}

// Channels-last copy for the CPU convolutions (a no-op when already so, or off the CPU).
at::Tensor conv_layout(const at::Tensor& x) {
  return x.dim() == 4 && onednn_ok(x) ? x.contiguous(kChannelsLast) : x;
}

// `y` (any layout) in the memory format of `like`.
at::Tensor same_layout(const at::Tensor& y, const at::Tensor& like) {
  return y.contiguous(like.suggest_memory_format());
}

// oneDNN reorders a convolution's weight into its blocked layout on every call: a temporary the
// size of the weight (118 MB for SD1.5's 2560->1280 3x3 convolutions). Weights over this size
// run in slices of output channels (each output channel is computed exactly as before), so the
// temporary stays under it.
constexpr int64_t kMaxWeightBytes = int64_t(32) << 20;

// conv2d(x, w, b) with w sliced along its output channels when big; the slices' outputs are
// joined along the channel dim (channels-last in, channels-last out).
at::Tensor conv2d_sliced(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, at::IntArrayRef stride,
                         at::IntArrayRef padding) {
  const int64_t O = w.size(0);
  const int64_t slices = std::min<int64_t>(O, (w.numel() * w.element_size() + kMaxWeightBytes - 1) / kMaxWeightBytes);
  if (slices <= 1) return at::conv2d(x, w, b, stride, padding);
  const int64_t per = (O + slices - 1) / slices;
  std::vector<at::Tensor> parts;
  for (int64_t o = 0; o < O; o += per) {
    const int64_t n = std::min(per, O - o);
    parts.push_back(at::conv2d(x, w.narrow(0, o, n), b.defined() ? b.narrow(0, o, n) : at::Tensor(), stride, padding));
  }
  return at::cat(parts, 1);
}

// x [..., K] -> [..., N] = x W^T + b: a 1x1 convolution over a channels-last [1, K, M, 1] view of
// the rows (no copy for contiguous x) on the CPU when there are enough rows to pay for oneDNN's
// set-up; the output [1, N, M, 1] channels-last is [M, N] row-major, so reshaping back is a view.
at::Tensor linear_fwd(const torch::nn::Linear& l, const at::Tensor& x) {
  const at::Tensor& w = l->weight;
  const at::Tensor& b = l->bias;
  const int64_t K = x.size(-1), N = w.size(0);
  const int64_t M = K > 0 ? x.numel() / K : 0;
  if (M < 64 || !onednn_ok(x) || w.scalar_type() != at::kFloat) return at::linear(x, w, b);
  at::Tensor xc = x.contiguous();
  at::Tensor rows = xc.as_strided({1, K, M, 1}, {M * K, 1, K, K});
  at::Tensor y = conv2d_sliced(rows, w.reshape({N, K, 1, 1}), b, {1, 1}, {0, 0});
  std::vector<int64_t> sizes = x.sizes().vec();
  sizes.back() = N;
  return y.permute({0, 2, 3, 1}).reshape(sizes);
}

// A convolution on the channels-last CPU path. Its weight is kept channels-last (converted once,
// here): oneDNN would otherwise copy it to channels-last on every call (a 118 MB temporary for
// SD1.5's 2560->1280 3x3 convolutions) before reordering it into its blocked layout. The values,
// names and shape of the parameter are unchanged; only its strides are.
void weight_to_channels_last(torch::nn::Conv2d conv) {
  at::Tensor& w = conv->weight;
  if (w.dim() == 4 && !w.is_contiguous(kChannelsLast)) {
    torch::NoGradGuard no_grad;
    w.set_data(w.contiguous(kChannelsLast));
  }
}

at::Tensor conv_cl(torch::nn::Conv2d conv, const at::Tensor& x) {
  weight_to_channels_last(conv);  // normally done when the block was built
  const auto& o = conv->options;
  if (o.groups() != 1 || !c10::get_if<torch::ExpandingArray<2>>(&o.padding()) || (*o.dilation())[0] != 1 ||
      (*o.dilation())[1] != 1 || o.padding_mode().index() != 0)
    return conv->forward(x);
  return conv2d_sliced(x, conv->weight, conv->bias, *o.stride(), *c10::get<torch::ExpandingArray<2>>(o.padding()));
}

// GroupNorm then SiLU, the SiLU in place.
at::Tensor norm_silu(torch::nn::GroupNorm norm, const at::Tensor& x) {
  at::Tensor h = norm->forward(x);
  return inference() ? at::silu_(h) : at::silu(h);
}

// A 1x1 convolution's weight as a Linear's ([O, I, 1, 1] -> [O, I]) over channels-last tokens.
at::Tensor conv1x1_tokens(const torch::nn::Conv2d& c, const at::Tensor& tokens) {
  const at::Tensor& w = c->weight;
  const int64_t K = tokens.size(-1), N = w.size(0), M = tokens.numel() / std::max<int64_t>(K, 1);
  if (M < 64 || !onednn_ok(tokens)) return at::linear(tokens, w.reshape({N, K}), c->bias);
  at::Tensor xc = tokens.contiguous();
  at::Tensor y = at::conv2d(xc.as_strided({1, K, M, 1}, {M * K, 1, K, K}), w, c->bias);
  std::vector<int64_t> sizes = tokens.sizes().vec();
  sizes.back() = N;
  return y.permute({0, 2, 3, 1}).reshape(sizes);
}
nn::Conv2d conv(int64_t in, int64_t out, int64_t k, int64_t stride = 1, int64_t pad = -1) {
  return nn::Conv2d(nn::Conv2dOptions(in, out, k).stride(stride).padding(pad < 0 ? k / 2 : pad));
}
nn::GroupNorm group_norm(int64_t groups, int64_t ch, double eps) {
  if (ch % groups != 0)
    throw ConfigError("GroupNorm: " + std::to_string(ch) + " channels are not divisible by " +
                      std::to_string(groups) + " groups (norm_num_groups)");
  return nn::GroupNorm(nn::GroupNormOptions(groups, ch).eps(eps));
}
nn::Linear linear(int64_t in, int64_t out, bool bias = true) { return nn::Linear(nn::LinearOptions(in, out).bias(bias)); }

// [B, L, H*D] -> [B, H, L, D]
at::Tensor split_heads(const at::Tensor& x, int64_t heads) {
  return x.view({x.size(0), x.size(1), heads, -1}).transpose(1, 2);
}
// [B, H, L, D] -> [B, L, H*D]
at::Tensor merge_heads(const at::Tensor& x) {
  return x.transpose(1, 2).reshape({x.size(0), x.size(2), -1});
}
}  // namespace

ResnetBlock2DImpl::ResnetBlock2DImpl(int64_t in, int64_t out, int64_t temb_channels, int64_t groups, double eps,
                                     double output_scale_factor)
    : output_scale_factor(output_scale_factor) {
  norm1 = register_module("norm1", group_norm(groups, in, eps));
  conv1 = register_module("conv1", conv(in, out, 3));
  if (temb_channels > 0) time_emb_proj = register_module("time_emb_proj", linear(temb_channels, out));
  norm2 = register_module("norm2", group_norm(groups, out, eps));
  conv2 = register_module("conv2", conv(out, out, 3));
  if (in != out) conv_shortcut = register_module("conv_shortcut", conv(in, out, 1));
  // 3x3 weights are stored channels-last from the start (see conv_cl): converting them at the
  // first forward would leave each old weight's memory as a hole among the activations.
  weight_to_channels_last(conv1);
  weight_to_channels_last(conv2);
}

at::Tensor ResnetBlock2DImpl::forward(const at::Tensor& x_in, const at::Tensor& temb) {
  if (!onednn_ok(x_in) || x_in.dim() != 4) {  // the plain formulation (GPU, autograd, other dtypes)
    at::Tensor h = conv1(at::silu(norm1(x_in)));
    if (time_emb_proj && temb.defined()) h = h + time_emb_proj(at::silu(temb)).unsqueeze(-1).unsqueeze(-1);
    h = conv2(at::silu(norm2(h)));
    at::Tensor skip = conv_shortcut ? conv_shortcut(x_in) : x_in;
    at::Tensor y = skip + h;
    return output_scale_factor == 1.0 ? y : y / output_scale_factor;
  }
  // Channels-last inside, every intermediate updated in place; one tensor of x's size alive
  // besides x at a time.
  const at::Tensor x = conv_layout(x_in);
  at::Tensor h = conv_cl(conv1, norm_silu(norm1, x));
  if (time_emb_proj && temb.defined()) h.add_(time_emb_proj(at::silu(temb)).unsqueeze(-1).unsqueeze(-1));
  at::Tensor a = norm_silu(norm2, h);
  h = at::Tensor();  // conv1's output is dead: free it before conv2 allocates
  h = conv_cl(conv2, a);
  a = at::Tensor();
  const auto fmt = x_in.suggest_memory_format();
  at::Tensor y;
  if (conv_shortcut) {
    y = conv_shortcut(x);
    if (y.is_contiguous(fmt)) y.add_(h);  // skip + h, in place
    else y = at::add(y, h).contiguous(fmt);
  } else if (h.is_contiguous(fmt)) {
    y = h.add_(x_in);  // h + skip == skip + h
  } else {
    y = at::empty(h.sizes(), h.options().memory_format(fmt));
    at::add_out(y, x_in, h);  // skip + h, written in the input's layout
  }
  if (output_scale_factor != 1.0) y.div_(output_scale_factor);
  return y;
}

Downsample2DImpl::Downsample2DImpl(int64_t channels, int64_t padding) : padding(padding) {
  conv = register_module("conv", iris::conv(channels, channels, 3, 2, padding));
  weight_to_channels_last(conv);
}

at::Tensor Downsample2DImpl::forward(const at::Tensor& x) {
  at::Tensor in = padding == 0 ? at::constant_pad_nd(x, {0, 1, 0, 1}) : x;
  if (onednn_ok(x) && x.dim() == 4) return same_layout(conv_cl(conv, conv_layout(in)), x);
  return conv(in);
}

Upsample2DImpl::Upsample2DImpl(int64_t channels) {
  conv = register_module("conv", iris::conv(channels, channels, 3));
  weight_to_channels_last(conv);
}

at::Tensor Upsample2DImpl::forward(const at::Tensor& x, c10::optional<std::vector<int64_t>> size) {
  const bool fast = onednn_ok(x) && x.dim() == 4;
  const at::Tensor in = fast ? conv_layout(x) : x;  // nearest upsampling keeps channels-last
  at::Tensor up = size ? at::upsample_nearest2d(in, *size)
                       : at::upsample_nearest2d(in, std::vector<int64_t>{x.size(2) * 2, x.size(3) * 2});
  return fast ? same_layout(conv_cl(conv, up), x) : conv(up);
}

AttentionImpl::AttentionImpl(int64_t query_dim, int64_t context_dim, int64_t heads, int64_t head_dim, bool bias)
    : heads(heads), head_dim(head_dim) {
  const int64_t inner = heads * head_dim;
  to_q = register_module("to_q", linear(query_dim, inner, bias));
  to_k = register_module("to_k", linear(context_dim, inner, bias));
  to_v = register_module("to_v", linear(context_dim, inner, bias));
  out_proj = linear(inner, query_dim, true);
  to_out = register_module("to_out", nn::ModuleList(out_proj));
}

at::Tensor AttentionImpl::forward(const at::Tensor& x, const at::Tensor& context) {
  const at::Tensor& ctx = context.defined() ? context : x;
  at::Tensor q = split_heads(linear_fwd(to_q, x), heads);
  at::Tensor k = split_heads(linear_fwd(to_k, ctx), heads);
  at::Tensor v = split_heads(linear_fwd(to_v, ctx), heads);
  at::Tensor out = attention(q, k, v);  // [B, H, Lq, D]
  for (const auto& s : streams) {
    if (!s || s->scale == 0.0 || !s->tokens.defined()) continue;
    at::Tensor sk = split_heads(s->to_k(s->tokens), heads), sv = split_heads(s->to_v(s->tokens), heads);
    AttentionOptions opt;
    if (s->key_mask.defined()) opt.mask = s->key_mask.view({s->key_mask.size(0), 1, 1, s->key_mask.size(1)});
    at::Tensor term = attention(q, sk, sv, opt) * s->scale;
    if (s->mask.defined())  // [B, L, 1] -> [B, 1, L, 1]
      term = term * mask_for_tokens(s->mask, x.size(1)).unsqueeze(1).to(term.dtype());
    out = out + term;
  }
  return linear_fwd(out_proj, merge_heads(out));
}

at::Tensor mask_for_tokens(const at::Tensor& mask, int64_t tokens) {
  const double aspect = static_cast<double>(mask.size(2)) / static_cast<double>(mask.size(3));
  int64_t best_h = 1;
  double best_err = 1e30;
  for (int64_t h = 1; h <= tokens; ++h) {
    if (tokens % h) continue;
    const double err = std::abs(std::log((static_cast<double>(h) * h / tokens) / aspect));
    if (err < best_err) best_err = err, best_h = h;
  }
  const int64_t w = tokens / best_h;
  at::Tensor m = at::upsample_nearest2d(mask.to(at::kFloat), std::vector<int64_t>{best_h, w});  // [B, 1, h, w]
  return m.reshape({m.size(0), tokens, 1});
}

FeedForwardImpl::FeedForwardImpl(int64_t dim, int64_t mult) {
  const int64_t inner = dim * mult;
  // net.0 = GEGLU(proj), net.1 = dropout, net.2 = Linear: register the same nesting.
  auto geglu = std::make_shared<nn::Module>();
  proj = geglu->register_module("proj", linear(dim, inner * 2));
  out = linear(inner, dim);
  auto net = register_module("net", nn::ModuleList());
  net->push_back(geglu);
  net->push_back(nn::Identity());
  net->push_back(out);
}

at::Tensor FeedForwardImpl::forward(const at::Tensor& x) {
  if (!inference()) {
    auto parts = proj(x).chunk(2, -1);  // hidden, gate
    return out(parts[0] * at::gelu(parts[1]));
  }
  auto geglu = [&](const at::Tensor& rows) {
    at::Tensor h = linear_fwd(proj, rows);
    const int64_t inner = h.size(-1) / 2;
    at::Tensor g = at::gelu(h.narrow(-1, inner, inner));  // a new tensor: multiply the hidden half in
    return linear_fwd(out, g.mul_(h.narrow(-1, 0, inner)));
  };
  // Rows are independent: over many tokens, run blocks of rows so the [rows, 2*inner] projection
  // (84 MB for SD1.5's 2 x 4096 tokens at once) stays a few MB and in cache.
  constexpr int64_t kRows = 2048;
  const int64_t C = x.size(-1), M = C > 0 ? x.numel() / C : 0;
  if (M <= 2 * kRows) return geglu(x);
  const at::Tensor xf = x.reshape({M, C});
  at::Tensor y;
  for (int64_t r0 = 0; r0 < M; r0 += kRows) {
    at::Tensor o = geglu(xf.narrow(0, r0, std::min(kRows, M - r0)));
    if (!y.defined()) y = at::empty({M, o.size(-1)}, o.options());
    y.narrow(0, r0, o.size(0)).copy_(o);
  }
  std::vector<int64_t> sizes = x.sizes().vec();
  sizes.back() = y.size(-1);
  return y.view(sizes);
}

BasicTransformerBlockImpl::BasicTransformerBlockImpl(int64_t dim, int64_t heads, int64_t head_dim, int64_t cross_dim,
                                                     bool only_cross_attention)
    : only_cross_attention(only_cross_attention) {
  norm1 = register_module("norm1", nn::LayerNorm(nn::LayerNormOptions({dim}).eps(1e-5)));
  attn1 = register_module("attn1", Attention(dim, only_cross_attention ? cross_dim : dim, heads, head_dim, false));
  norm2 = register_module("norm2", nn::LayerNorm(nn::LayerNormOptions({dim}).eps(1e-5)));
  attn2 = register_module("attn2", Attention(dim, cross_dim, heads, head_dim, false));
  norm3 = register_module("norm3", nn::LayerNorm(nn::LayerNormOptions({dim}).eps(1e-5)));
  ff = register_module("ff", FeedForward(dim, 4));
}

at::Tensor BasicTransformerBlockImpl::forward(const at::Tensor& x, const at::Tensor& context, Recorder* rec,
                                              const std::string& path) {
  at::Tensor h = x + attn1(norm1(x), only_cross_attention ? context : at::Tensor());
  at::Tensor a2 = attn2(norm2(h), context);
  if (rec) (*rec)[path + ".attn2"] = a2;
  if (!inference()) {
    h = h + a2;
    return h + ff(norm3(h));
  }
  h.add_(a2);  // h is this block's own tensor: accumulate the residuals in place
  return h.add_(ff(norm3(h)));
}

Transformer2DImpl::Transformer2DImpl(int64_t channels, int64_t heads, int64_t layers, int64_t cross_dim,
                                     int64_t groups, bool use_linear_projection, bool only_cross_attention)
    : linear(use_linear_projection) {
  if (heads <= 0 || channels % heads != 0)
    throw ConfigError(std::to_string(channels) + " channels cannot be split into " + std::to_string(heads) +
                      " attention heads");
  norm = register_module("norm", group_norm(groups, channels, 1e-6));
  if (linear) proj_in_linear = register_module("proj_in", iris::linear(channels, channels));
  else proj_in_conv = register_module("proj_in", conv(channels, channels, 1));
  auto list = register_module("transformer_blocks", nn::ModuleList());
  for (int64_t i = 0; i < layers; ++i) {
    blocks.push_back(BasicTransformerBlock(channels, heads, channels / heads, cross_dim, only_cross_attention));
    list->push_back(blocks.back());
  }
  if (linear) proj_out_linear = register_module("proj_out", iris::linear(channels, channels));
  else proj_out_conv = register_module("proj_out", conv(channels, channels, 1));
}

at::Tensor Transformer2DImpl::forward(const at::Tensor& x, const at::Tensor& context, Recorder* rec,
                                      const std::string& path) {
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  if (!onednn_ok(x)) {  // the plain formulation (GPU, autograd, other dtypes)
    at::Tensor h = norm(x);
    if (linear) h = proj_in_linear(h.permute({0, 2, 3, 1}).reshape({B, H * W, C}));
    else h = proj_in_conv(h).permute({0, 2, 3, 1}).reshape({B, H * W, C});
    for (size_t i = 0; i < blocks.size(); ++i)
      h = blocks[i]->forward(h, context, rec, path + ".transformer_blocks." + std::to_string(i));
    if (linear) h = proj_out_linear(h).reshape({B, H, W, C}).permute({0, 3, 1, 2});
    else h = proj_out_conv(h.reshape({B, H, W, C}).permute({0, 3, 1, 2}).contiguous());
    return h + x;
  }
  // tokens: [B, H*W, C]. A channels-last [B, C, H, W] is that tensor already, so the 1x1
  // projections are Linears over the rows and no permute copies anything.
  at::Tensor h = norm(conv_layout(x)).permute({0, 2, 3, 1}).reshape({B, H * W, C});
  h = linear ? linear_fwd(proj_in_linear, h) : conv1x1_tokens(proj_in_conv, h);
  for (size_t i = 0; i < blocks.size(); ++i)
    h = blocks[i]->forward(h, context, rec, path + ".transformer_blocks." + std::to_string(i));
  h = linear ? linear_fwd(proj_out_linear, h) : conv1x1_tokens(proj_out_conv, h);
  at::Tensor y = at::empty_like(x, x.suggest_memory_format());
  return at::add_out(y, h.view({B, H, W, C}).permute({0, 3, 1, 2}), x);
}

SpatialSelfAttentionImpl::SpatialSelfAttentionImpl(int64_t channels, int64_t groups, double eps, int64_t head_dim)
    : heads(channels / head_dim) {
  group_norm = register_module("group_norm", iris::group_norm(groups, channels, eps));
  to_q = register_module("to_q", linear(channels, channels));
  to_k = register_module("to_k", linear(channels, channels));
  to_v = register_module("to_v", linear(channels, channels));
  out_proj = linear(channels, channels);
  to_out = register_module("to_out", nn::ModuleList(out_proj));
}

at::Tensor SpatialSelfAttentionImpl::forward(const at::Tensor& x) {
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  if (!onednn_ok(x)) {  // the plain formulation (GPU, autograd, other dtypes)
    at::Tensor h = group_norm(x).view({B, C, H * W}).transpose(1, 2);  // [B, HW, C]
    at::Tensor q = split_heads(to_q(h), heads), k = split_heads(to_k(h), heads), v = split_heads(to_v(h), heads);
    h = out_proj(merge_heads(attention(q, k, v)));
    return h.transpose(1, 2).reshape({B, C, H, W}) + x;
  }
  // Channels-last: the normalised image is the [B, HW, C] token matrix already.
  at::Tensor h = group_norm(conv_layout(x)).permute({0, 2, 3, 1}).reshape({B, H * W, C});
  at::Tensor q = split_heads(linear_fwd(to_q, h), heads), k = split_heads(linear_fwd(to_k, h), heads),
             v = split_heads(linear_fwd(to_v, h), heads);
  h = linear_fwd(out_proj, merge_heads(attention(q, k, v)));
  at::Tensor y = at::empty_like(x, x.suggest_memory_format());
  return at::add_out(y, h.view({B, H, W, C}).permute({0, 3, 1, 2}), x);
}

}  // namespace iris
