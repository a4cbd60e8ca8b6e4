// The generic trainer: AdamW matches the formula, the LR schedule, clipping, EMA, and
// checkpoints (resume = uninterrupted, bit for bit; corrupt or mismatched files are clear errors).
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>

#include <torch/nn/modules/linear.h>
#include <torch/torch.h>

#include "core/error.h"
#include "diffusion/noise.h"
#include "pipelines/trainer.h"
#include "test_util.h"

using namespace iris;

namespace {

// A small least-squares problem: fit W x + b = y for a fixed random linear target.
struct Toy {
  torch::nn::Linear lin{nullptr};
  at::Tensor x, y;
  // The data is always the same; `seed` sets the initial weights.
  explicit Toy(uint64_t seed) {
    at::manual_seed(1234);
    x = at::randn({64, 8});
    y = x.matmul(at::randn({8, 4})) + 0.5;
    at::manual_seed(seed);
    lin = torch::nn::Linear(8, 4);
  }
  at::Tensor loss(at::Generator& gen) {
    // A per-step random mini-batch: exercises the step generator.
    const at::Tensor idx = at::randint(64, {16}, gen, at::kLong);
    return (lin->forward(x.index_select(0, idx)) - y.index_select(0, idx)).pow(2).mean();
  }
};

TrainerOptions quiet(int64_t steps, const std::string& dir = "") {
  TrainerOptions o;
  o.steps = steps;
  o.lr = 0.05;
  o.warmup_steps = 2;
  o.seed = 7;
  o.checkpoint_dir = dir;
  o.ema_decay = 0.9;
  o.log = [](const std::string&) {};
  return o;
}

}  // namespace

TEST(Trainer, LossDecreases) {
  Toy toy(1);
  Trainer t(named_trainable_parameters(*toy.lin), quiet(60));
  double first = 0, last = 0;
  t.run([&](int64_t step, at::Generator& gen) {
    at::Tensor l = toy.loss(gen);
    if (step == 0) first = l.item<double>();
    last = l.item<double>();
    return l;
  });
  EXPECT_TRUE(t.done());
  EXPECT_LT(last, 0.2 * first);
}

TEST(Trainer, AdamWFirstStepMatchesFormula) {
  at::Tensor p = at::ones({2, 2}).set_requires_grad(true);
  TrainerOptions o = quiet(10);
  o.warmup_steps = 0;
  o.cosine = false;
  o.grad_clip = 0;
  o.ema_decay = 0;
  o.lr = 0.1;
  o.weight_decay = 0.5;
  Trainer t({{"p", p}}, o);
  // loss = sum(3 p): gradient 3 everywhere; first Adam step moves by lr * sign(g).
  t.step((p * 3).sum());
  const double expected = 1.0 * (1 - 0.1 * 0.5) - 0.1 * 3 / (3 + 1e-8);
  EXPECT_NEAR(p[0][0].item<double>(), expected, 1e-6);
}

TEST(Trainer, ScheduleWarmupCosineAndClipping) {
  at::Tensor p = at::zeros({3}).set_requires_grad(true);
  TrainerOptions o = quiet(110);
  o.lr = 1.0;
  o.warmup_steps = 10;
  o.min_lr_ratio = 0.1;
  Trainer t({{"p", p}}, o);
  EXPECT_NEAR(t.lr_at(0), 0.1, 1e-12);
  EXPECT_NEAR(t.lr_at(9), 1.0, 1e-12);
  EXPECT_NEAR(t.lr_at(60), 0.55, 1e-12);  // half-way through the cosine
  EXPECT_NEAR(t.lr_at(110), 0.1, 1e-12);
  t.step((p * 100).sum());
  EXPECT_NEAR(t.last_grad_norm(), 100 * std::sqrt(3.0), 1e-3);  // reported before clipping
}

TEST(Trainer, ResumeEqualsUninterrupted) {
  const auto dir = testing_util::scratch_dir();
  Toy straight(3);
  Trainer a(named_trainable_parameters(*straight.lin), quiet(8));
  a.run([&](int64_t, at::Generator& g) { return straight.loss(g); });

  Toy first(3);
  TrainerOptions o = quiet(8, (dir / "ckpt").string());
  o.checkpoint_every = 3;
  {
    Trainer b(named_trainable_parameters(*first.lin), o);
    EXPECT_FALSE(b.resume());
    b.extra()["note"] = "kept";
    while (b.current_step() < 5) {
      at::Generator g = make_cpu_generator(b.step_seed());
      b.step(first.loss(g));
    }
  }
  // The checkpoint holds step 3 (saved at the multiple of checkpoint_every); a fresh model
  // with other initial weights resumes from it.
  Toy second(99);
  Trainer c(named_trainable_parameters(*second.lin), o);
  ASSERT_TRUE(c.resume());
  EXPECT_EQ(c.current_step(), 3);
  EXPECT_EQ(c.extra().value("note", ""), "kept");
  c.run([&](int64_t, at::Generator& g) { return second.loss(g); });
  ASSERT_EQ(a.parameters().size(), c.parameters().size());
  for (size_t i = 0; i < a.parameters().size(); ++i) {
    EXPECT_TRUE(at::equal(a.parameters()[i].second, c.parameters()[i].second)) << a.parameters()[i].first;
    EXPECT_TRUE(at::equal(a.ema()[i].second, c.ema()[i].second)) << a.ema()[i].first;
  }
}

TEST(Trainer, StopAtThenResumeEqualsUninterruptedAndReplaysARetargetedSchedule) {
  const auto dir = testing_util::scratch_dir();
  Toy straight(3);
  Trainer a(named_trainable_parameters(*straight.lin), quiet(8));
  a.run([&](int64_t, at::Generator& g) { return straight.loss(g); });

  // The same 8-step schedule, run as 5 + 3 with stop_at: identical weights.
  TrainerOptions o = quiet(8, (dir / "stop").string());
  o.stop_at = 5;
  Toy first(3);
  {
    Trainer b(named_trainable_parameters(*first.lin), o);
    b.run([&](int64_t, at::Generator& g) { return first.loss(g); });
    EXPECT_EQ(b.current_step(), 5);
    EXPECT_FALSE(b.done());
  }
  o.stop_at = 0;
  Toy second(42);
  Trainer c(named_trainable_parameters(*second.lin), o);
  ASSERT_TRUE(c.resume());
  EXPECT_EQ(c.current_step(), 5);
  c.run([&](int64_t, at::Generator& g) { return second.loss(g); });
  for (size_t i = 0; i < a.parameters().size(); ++i)
    EXPECT_TRUE(at::equal(a.parameters()[i].second, c.parameters()[i].second)) << a.parameters()[i].first;

  // A schedule retargeted mid-run (steps 12 until step 4, then 8) replays bit for bit, and
  // differs from the plain 8-step schedule.
  auto retargeted = [&](const std::string& name) {
    TrainerOptions r = quiet(12, (dir / name).string());
    r.stop_at = 4;
    Toy t(3);
    {
      Trainer x(named_trainable_parameters(*t.lin), r);
      x.run([&](int64_t, at::Generator& g) { return t.loss(g); });
    }
    r.steps = 8;
    r.stop_at = 0;
    Trainer y(named_trainable_parameters(*t.lin), r);
    y.resume();
    y.run([&](int64_t, at::Generator& g) { return t.loss(g); });
    return y.parameters()[0].second.clone();
  };
  const at::Tensor r1 = retargeted("re1"), r2 = retargeted("re2");
  EXPECT_TRUE(at::equal(r1, r2));
  EXPECT_FALSE(at::equal(r1, a.parameters()[0].second));
}

TEST(Trainer, CorruptOrMismatchedCheckpointIsAClearError) {
  const auto dir = testing_util::scratch_dir() / "ckpt";
  Toy toy(4);
  Trainer t(named_trainable_parameters(*toy.lin), quiet(2, dir.string()));
  t.run([&](int64_t, at::Generator& g) { return toy.loss(g); });
  const std::string path = Trainer::state_path(dir.string());

  // Other parameter shapes.
  torch::nn::Linear other(8, 5);
  Trainer wrong_shape(named_trainable_parameters(*other), quiet(2, dir.string()));
  EXPECT_THROW(wrong_shape.resume(), CheckpointError);
  // Other parameter names.
  at::Tensor q = at::zeros({4, 8}).set_requires_grad(true);
  Trainer wrong_names({{"q", q}}, quiet(2, dir.string()));
  EXPECT_THROW(wrong_names.resume(), CheckpointError);
  // Another seed.
  TrainerOptions seeded = quiet(2, dir.string());
  seeded.seed = 8;
  Trainer wrong_seed(named_trainable_parameters(*toy.lin), seeded);
  EXPECT_THROW(wrong_seed.resume(), ConfigError);
  // Truncated file.
  std::filesystem::resize_file(path, std::filesystem::file_size(path) / 2);
  Trainer truncated(named_trainable_parameters(*toy.lin), quiet(2, dir.string()));
  try {
    truncated.resume();
    FAIL() << "expected FormatError";
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("trainer_state.safetensors"), std::string::npos) << e.what();
  }
  { std::ofstream(path) << "garbage"; }
  EXPECT_THROW(truncated.resume(), FormatError);
}

TEST(Trainer, NonFiniteLossAndBadOptionsThrow) {
  at::Tensor p = at::zeros({3}).set_requires_grad(true);
  Trainer t({{"p", p}}, quiet(5));
  EXPECT_THROW(t.step((p / 0.0).sum() * 0 + std::nan("")), ConfigError);
  EXPECT_THROW(Trainer({}, quiet(5)), ConfigError);
  TrainerOptions bad = quiet(5);
  bad.lr = 0;
  EXPECT_THROW(Trainer({{"p", p}}, bad), ConfigError);
  EXPECT_THROW(Trainer({{"p", p}, {"p", p}}, quiet(5)), ConfigError);
}

TEST(Trainer, FormatDuration) {
  EXPECT_EQ(format_duration(12.2), "12s");
  EXPECT_EQ(format_duration(185), "3m05s");
  EXPECT_EQ(format_duration(3720), "1h02m");
}
