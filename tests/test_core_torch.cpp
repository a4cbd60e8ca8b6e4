// The LibTorch bridge: tensors from safetensors, state-dict loading, attention, devices.
#include <gtest/gtest.h>

#include <filesystem>

#include <torch/nn/module.h>
#include <torch/nn/modules/linear.h>

#include "core/attention.h"
#include "core/error.h"
#include "tests/test_util.h"
#include "core/runtime.h"
#include "core/state_dict.h"
#include "core/tensor_io.h"

using namespace iris;
namespace fs = std::filesystem;

namespace {

std::string temp_path(const std::string& name) { return iris::testing_util::scratch(name); }

struct TinyNet : torch::nn::Module {
  torch::nn::Linear proj{nullptr};
  at::Tensor scale;
  TinyNet() {
    proj = register_module("proj", torch::nn::Linear(3, 2));
    scale = register_buffer("scale", at::ones({2}));
  }
};

}  // namespace

TEST(TensorIo, WriteReadAllDtypesAndConvertHalves) {
  at::manual_seed(0);
  std::vector<std::pair<std::string, at::Tensor>> ts = {
      {"f32", at::randn({2, 3})},
      {"f16", at::randn({4}).to(at::kHalf)},
      {"bf16", at::randn({4}).to(at::kBFloat16)},
      {"i64", at::arange(6, at::kLong).view({2, 3})},
      {"u8", at::arange(5, at::kByte)},
      {"b", at::tensor({1, 0, 1}).to(at::kBool)},
  };
  const std::string path = temp_path("torch.safetensors");
  write_safetensors(path, ts, {{"class", "test"}});
  TensorStore s = TensorStore::open(path);
  EXPECT_EQ(s.metadata().at("class"), "test");
  for (const auto& [name, t] : ts) {
    at::Tensor raw = read_tensor_raw(s.file_of(name), s.info(name));
    EXPECT_EQ(raw.scalar_type(), t.scalar_type()) << name;
    EXPECT_TRUE(raw.equal(t)) << name;
  }
  at::Tensor h = read_tensor(s, "f16");
  EXPECT_EQ(h.scalar_type(), at::kFloat);
  EXPECT_TRUE(h.equal(ts[1].second.to(at::kFloat)));
  EXPECT_EQ(read_tensor(s, "bf16").scalar_type(), at::kFloat);
  EXPECT_EQ(read_tensor(s, "i64").scalar_type(), at::kLong);
}

TEST(StateDict, LoadsThroughRenameTableAndReportsByName) {
  TinyNet net;
  const std::string path = temp_path("net.safetensors");
  at::Tensor w = at::arange(6, at::kFloat).view({2, 3}), b = at::tensor({0.5f, -0.5f}), sc = at::tensor({2.f, 3.f});
  write_safetensors(path, {{"model.linear.weight", w.to(at::kHalf)}, {"model.linear.bias", b}, {"model.scale", sc},
                           {"model_ema.decay", at::ones({1})}});
  TensorStore s = TensorStore::open(path);
  RenameTable table;
  table.prefix("model.linear.", "proj.").prefix("model.", "").ignore("model_ema.");
  LoadReport r = load_state_dict(net, s, table);
  EXPECT_TRUE(r.ok()) << r.summary();
  EXPECT_EQ(r.loaded.size(), 3u);
  EXPECT_TRUE(net.proj->weight.equal(w));
  EXPECT_TRUE(net.scale.equal(sc));

  // Missing, unexpected and mismatched keys are errors that name the keys and shapes.
  write_safetensors(path, {{"proj.weight", at::zeros({3, 3})}, {"extra.thing", at::zeros({1})}});
  TensorStore bad = TensorStore::open(path);
  try {
    load_state_dict(net, bad, RenameTable());
    FAIL();
  } catch (const CheckpointError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(path), std::string::npos) << msg;
    EXPECT_NE(msg.find("key proj.weight: expected [2,3], found [3,3]"), std::string::npos) << msg;
    EXPECT_NE(msg.find("missing keys: proj.bias, scale"), std::string::npos) << msg;
    EXPECT_NE(msg.find("unexpected keys: extra.thing"), std::string::npos) << msg;
  }
  LoadOptions lenient;
  lenient.strict = false;
  LoadReport rep = load_state_dict(net, bad, RenameTable(), lenient);
  EXPECT_EQ(rep.mismatched.size(), 1u);
  EXPECT_EQ(rep.missing.size(), 2u);
  EXPECT_EQ(rep.unexpected.size(), 1u);
}

TEST(StateDict, SourcePrefixSelectsAComponent) {
  TinyNet net;
  std::map<std::string, at::Tensor> tensors = {{"unet.proj.weight", at::ones({2, 3})},
                                               {"unet.proj.bias", at::zeros({2})},
                                               {"unet.scale", at::ones({2})},
                                               {"vae.other", at::ones({7})}};
  LoadOptions opt;
  opt.source_prefix = "unet.";
  EXPECT_TRUE(load_state_dict(net, tensors, RenameTable(), opt, "fixture").ok());
}

TEST(Attention, MatchesReferenceFormula) {
  at::manual_seed(1);
  at::Tensor q = at::randn({2, 3, 5, 8}), k = at::randn({2, 3, 7, 8}), v = at::randn({2, 3, 7, 8});
  at::Tensor ref = at::matmul(at::softmax(at::matmul(q, k.transpose(-2, -1)) / std::sqrt(8.0), -1), v);
  EXPECT_TRUE(at::allclose(attention(q, k, v), ref, 1e-5, 1e-6));
  AttentionOptions ex;
  ex.force_explicit = true;
  EXPECT_TRUE(at::allclose(attention(q, k, v, ex), ref, 1e-5, 1e-6));
  at::Tensor w = attention_weights(q, k);
  EXPECT_TRUE(at::allclose(w.sum(-1), at::ones({2, 3, 5}), 1e-5, 1e-6));
}

TEST(Attention, CausalWithCacheIsEndAligned) {
  at::manual_seed(2);
  // 3 new queries over 6 keys (3 cached): query i sees keys 0..3+i.
  at::Tensor q = at::randn({1, 2, 3, 4}), k = at::randn({1, 2, 6, 4}), v = at::randn({1, 2, 6, 4});
  AttentionOptions causal;
  causal.causal = true;
  at::Tensor w = attention_weights(q, k, causal);
  EXPECT_EQ(w.index({0, 0, 0}).slice(0, 4).abs().sum().item<float>(), 0.f);
  EXPECT_GT(w.index({0, 0, 0, 3}).item<float>(), 0.f);
  EXPECT_GT(w.index({0, 0, 2, 5}).item<float>(), 0.f);
  // The fused path (when built) and the explicit path agree.
  AttentionOptions ex = causal;
  ex.force_explicit = true;
  EXPECT_TRUE(at::allclose(attention(q, k, v, causal), attention(q, k, v, ex), 1e-5, 1e-6));
  // Bool and additive masks mean the same thing.
  at::Tensor keep = at::rand({1, 1, 3, 6}) > 0.3;
  keep.index_put_({"...", 0}, true);
  AttentionOptions mb, ma;
  mb.mask = keep;
  ma.mask = at::zeros({1, 1, 3, 6}).masked_fill(keep.logical_not(), -1e30);
  EXPECT_TRUE(at::allclose(attention(q, k, v, mb), attention(q, k, v, ma), 1e-5, 1e-6));
}

// Score matrices over 4M elements take the row-chunked path (never materialised whole); it
// must mean exactly what the whole-matrix formula means, with masks, causal caches, fully
// masked rows and broadcast K/V.
TEST(Attention, ChunkedPathMatchesWholeMatrix) {
  at::manual_seed(3);
  auto reference = [](const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& additive) {
    at::Tensor s = at::matmul(q, k.transpose(-2, -1)) / std::sqrt(static_cast<double>(q.size(-1)));
    if (additive.defined()) s = s + additive;
    return at::matmul(at::nan_to_num(at::softmax(s, -1), 0.0), v);
  };
  {  // plain, with the [B, H, L, D] views split_heads makes (strided, not contiguous)
    at::Tensor x = at::randn({2, 1100, 2 * 16}), y = at::randn({1, 1000, 2 * 16}), z = at::randn({1, 1000, 2 * 24});
    at::Tensor q = x.view({2, 1100, 2, 16}).transpose(1, 2), k = y.view({1, 1000, 2, 16}).transpose(1, 2),
               v = z.view({1, 1000, 2, 24}).transpose(1, 2);
    at::Tensor got = attention(q, k, v);
    EXPECT_EQ(got.sizes(), (std::vector<int64_t>{2, 2, 1100, 24}));
    EXPECT_TRUE(at::allclose(got, reference(q, k, v, {}), 1e-5, 1e-6));
  }
  {  // causal over a cache (Lk > Lq), a bool key mask that blanks whole rows, a custom scale
    at::Tensor q = at::randn({1, 2, 1100, 8}), k = at::randn({1, 2, 2000, 8}), v = at::randn({1, 2, 2000, 8});
    at::Tensor keep = at::rand({1, 1, 1100, 2000}) > 0.5;
    keep.index_put_({0, 0, 7}, false);  // query 7 sees nothing: its output is 0
    AttentionOptions o;
    o.causal = true;
    o.mask = keep;
    o.scale = 0.3;
    at::Tensor causal_keep = at::ones({1100, 2000}, at::kBool).tril(900);
    at::Tensor additive = at::zeros({1, 1, 1100, 2000}).masked_fill((keep & causal_keep).logical_not(),
                                                                     -std::numeric_limits<float>::infinity());
    at::Tensor s = at::matmul(q, k.transpose(-2, -1)) * 0.3 + additive;
    at::Tensor ref = at::matmul(at::nan_to_num(at::softmax(s, -1), 0.0), v);
    at::Tensor got = attention(q, k, v, o);
    EXPECT_TRUE(at::allclose(got, ref, 1e-5, 1e-6));
    EXPECT_EQ(got.index({0, 0, 7}).abs().sum().item<float>(), 0.f);
    AttentionOptions ex = o;
    ex.force_explicit = true;
    EXPECT_TRUE(at::allclose(attention(q, k, v, ex), ref, 1e-5, 1e-6));
  }
  {  // double precision takes the row-chunked matmul path (the float CPU path uses oneDNN)
    at::Tensor q = at::randn({1, 2, 1500, 8}, at::kDouble), k = at::randn({1, 2, 1500, 8}, at::kDouble),
               v = at::randn({1, 2, 1500, 8}, at::kDouble);
    AttentionOptions o;
    o.causal = true;
    at::Tensor additive = at::zeros({1500, 1500}, at::kDouble)
                              .masked_fill(at::ones({1500, 1500}, at::kBool).tril().logical_not(),
                                           -std::numeric_limits<double>::infinity());
    EXPECT_TRUE(at::allclose(attention(q, k, v, o), reference(q, k, v, additive), 1e-10, 1e-12));
  }
  {  // additive float mask broadcast over heads and queries
    at::Tensor q = at::randn({1, 3, 1500, 8}), k = at::randn({1, 3, 1500, 8}), v = at::randn({1, 3, 1500, 8});
    AttentionOptions o;
    o.mask = at::randn({1, 1, 1, 1500});
    EXPECT_TRUE(at::allclose(attention(q, k, v, o), reference(q, k, v, *o.mask), 1e-5, 1e-6));
  }
}

TEST(Attention, RejectsBadShapes) {
  EXPECT_THROW(attention(at::zeros({2, 3, 4}), at::zeros({2, 3, 4}), at::zeros({2, 3, 4})), ShapeError);
  EXPECT_THROW(attention(at::zeros({1, 1, 2, 4}), at::zeros({1, 1, 2, 5}), at::zeros({1, 1, 2, 5})), ShapeError);
}

TEST(Runtime, DeviceSelection) {
  EXPECT_EQ(select_device("cpu").type(), c10::kCPU);
  EXPECT_THROW(select_device("tpu"), ConfigError);
  if (!cuda_available()) {
    EXPECT_THROW(select_device("cuda"), ConfigError);
    EXPECT_EQ(select_device("auto").type(), c10::kCPU);
  }
  set_threads(2);
  EXPECT_EQ(get_threads(), 2);
}
