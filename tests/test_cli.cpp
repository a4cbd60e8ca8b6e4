// The iris CLI as a user meets it: exit codes, one-line errors naming the culprit.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/image.h"
#include "core/safetensors.h"
#include "tests/test_util.h"

namespace fs = std::filesystem;

namespace {

struct CliRun {
  int code;
  std::string out, err;
};

std::string slurp(const std::string& p) {
  std::ifstream f(p);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

CliRun run_iris(const std::string& args) {
  const std::string out = (iris::testing_util::scratch_dir() / "cli.out").string();
  const std::string err = (iris::testing_util::scratch_dir() / "cli.err").string();
  const std::string cmd = std::string(IRIS_CLI) + " " + args + " >" + out + " 2>" + err;
  int status = std::system(cmd.c_str());
  return {WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status), slurp(out), slurp(err)};
}

std::string temp_file(const std::string& name, const std::string& bytes) {
  const std::string p = (iris::testing_util::scratch_dir() / name).string();
  std::ofstream(p, std::ios::binary) << bytes;
  return p;
}

// A failure: exit code 1, exactly one line on stderr starting "error: " and naming `what`.
void expect_clean_error(const CliRun& r, const std::string& what) {
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_EQ(r.err.rfind("error: ", 0), 0u) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_NE(r.err.find(what), std::string::npos) << r.err;
}

const std::string kFixtures = IRIS_FIXTURES_DIR;

}  // namespace

TEST(Cli, Version) {
  CliRun r = run_iris("--version");
  EXPECT_EQ(r.code, 0);
  EXPECT_EQ(r.out.rfind("iris ", 0), 0u) << r.out;
}

TEST(Cli, InfoOnFixtureListsTensors) {
  CliRun r = run_iris("info " + kFixtures + "/unet_tiny.safetensors --tensors");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("single file"), std::string::npos);
  EXPECT_NE(r.out.find("conv_in.weight"), std::string::npos);
  EXPECT_NE(r.out.find("metadata class: diffusers.UNet2DConditionModel"), std::string::npos) << r.out;
}

TEST(Cli, InfoOnLdmFileNamesGroups) {
  CliRun r = run_iris("info " + kFixtures + "/unet_sd15like_ldm.safetensors");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("unet (LDM naming)"), std::string::npos) << r.out;
}

TEST(Cli, ParityRoundTripOnEveryFixture) {
  std::string args = "parity --roundtrip-only";
  int n = 0;
  for (const auto& e : fs::directory_iterator(kFixtures))
    if (e.path().extension() == ".safetensors") {
      args += " " + e.path().string();
      ++n;
    }
  CliRun r = run_iris(args);
  EXPECT_EQ(r.code, 0) << r.out << r.err;
  size_t pass = 0;
  for (size_t pos = 0; (pos = r.out.find("PASS", pos)) != std::string::npos; ++pos) ++pass;
  EXPECT_EQ(pass, static_cast<size_t>(n)) << r.out;
}

TEST(Cli, BadInputsGiveOneLineErrors) {
  expect_clean_error(run_iris("info /nonexistent/model"), "/nonexistent/model");
  std::string zero(8, '\0');
  expect_clean_error(run_iris("info " + temp_file("zero.safetensors", zero)), "header length is 0");
  std::string huge("\0\0\0\0\0\0\0\x80", 8);
  expect_clean_error(run_iris("info " + temp_file("huge.safetensors", huge + "{}")), "exceeds the limit");
  std::string beyond("\xff\0\0\0\0\0\0\0{}", 10);
  expect_clean_error(run_iris("info " + temp_file("beyond.safetensors", beyond)), "beyond the end of the file");
  std::string json("\x06\0\0\0\0\0\0\0{\"a\":1", 14);
  expect_clean_error(run_iris("info " + temp_file("json.safetensors", json)), "malformed JSON");
  std::string text = "hello, I am not a checkpoint\n";
  expect_clean_error(run_iris("info " + temp_file("text.safetensors", text)), "text.safetensors");
  // A real fixture cut in half.
  const std::string whole = slurp(kFixtures + "/vae_tiny.safetensors");
  expect_clean_error(run_iris("info " + temp_file("half.safetensors", whole.substr(0, whole.size() / 2))),
                     "half.safetensors");
  expect_clean_error(run_iris("parity " + temp_file("x.txt", "x")), "parity");
}

TEST(Cli, UnknownOptionFails) {
  CliRun r = run_iris("info --no-such-flag x");
  EXPECT_NE(r.code, 0);
}

TEST(Cli, RenderWritesPngWithParametersAndIsDeterministic) {
  const std::string dir = (iris::testing_util::scratch_dir() / "tinysd").string();
  CliRun made = run_iris("random-model " + dir + " --tokenizer " + kFixtures + "/data/clip_tokenizer");
  ASSERT_EQ(made.code, 0) << made.err;
  const std::string a = (iris::testing_util::scratch_dir() / "a.png").string();
  const std::string b = (iris::testing_util::scratch_dir() / "b.png").string();
  const std::string args = "render --model " + dir + " -p \"a blue square\" --steps 2 --size 32x32 --seed 5 ";
  CliRun r1 = run_iris(args + "-o " + a);
  ASSERT_EQ(r1.code, 0) << r1.err;
  EXPECT_NE(r1.out.find("seed 5"), std::string::npos);
  EXPECT_NE(r1.err.find("denoise 2/2"), std::string::npos) << r1.err;
  ASSERT_EQ(run_iris(args + "-o " + b).code, 0);
  EXPECT_EQ(slurp(a), slurp(b));  // same seed and settings: the same PNG, byte for byte
  EXPECT_NE(slurp(a).find("Steps: 2, Sampler: Euler a, CFG scale: 7.5, Seed: 5, Size: 32x32"), std::string::npos);

  // No --size: the model's native size (its UNet sample_size 8 x VAE factor 2), named in the PNG.
  const std::string c = (iris::testing_util::scratch_dir() / "c.png").string();
  CliRun native = run_iris("render --model " + dir + " -p \"a blue square\" --steps 1 --seed 5 -o " + c);
  ASSERT_EQ(native.code, 0) << native.err;
  EXPECT_EQ(iris::load_image(c).width, 16);
  EXPECT_NE(slurp(c).find("Size: 16x16"), std::string::npos);

  expect_clean_error(run_iris("render --model " + dir + " -p x --size 31x32 -o " + a), "multiple of");
  expect_clean_error(run_iris("render --model " + dir + " -p x --size 0x32 -o " + a), "--size");
  expect_clean_error(run_iris("render --model " + dir + " -p x --steps 0 -o " + a), "steps 0");
  expect_clean_error(run_iris("render --model " + dir + " -p x --size big -o " + a), "--size");
  expect_clean_error(run_iris("render --model /nonexistent -p x -o " + a), "/nonexistent");
  expect_clean_error(run_iris("render --model " + dir + " -p x --size 32x32 --steps 1 --init /nonexistent.png -o " + a), "/nonexistent.png");
  expect_clean_error(run_iris("render --model " + dir + " -p x --size 32x32 --steps 1 -o /nonexistent-dir/x.png"), "does not exist");
}

TEST(Cli, AskStreamsAnAnswerAndEndsWithStats) {
  const std::string dir = (iris::testing_util::scratch_dir() / "tinyllava").string();
  CliRun made = run_iris("random-llava " + dir + " --seed 3");
  ASSERT_EQ(made.code, 0) << made.err;
  // A small PNG written through the library's encoder.
  iris::Image img(24, 20, 3);
  for (size_t i = 0; i < img.pixels.size(); ++i) img.pixels[i] = static_cast<uint8_t>(i * 37 % 251);
  const std::string png = (iris::testing_util::scratch_dir() / "q.png").string();
  iris::save_png(png, img);

  const std::string base = "ask --model " + dir + " --image " + png + " ";
  CliRun r = run_iris(base + "\"What is in the image?\" --max-tokens 6");
  ASSERT_EQ(r.code, 0) << r.err;
  const size_t stats = r.out.rfind("prompt tokens ");
  ASSERT_NE(stats, std::string::npos) << r.out;
  EXPECT_NE(r.out.find("generated tokens", stats), std::string::npos);
  EXPECT_NE(r.out.find("tok/s", stats), std::string::npos);
  EXPECT_EQ(r.out.back(), '\n');
  CliRun sampled = run_iris(base + "\"What?\" --max-tokens 4 --temperature 0.8 --top-k 10 --top-p 0.9 "
                                   "--repetition-penalty 1.1 --seed 7 --stop \"###\" --template \"Q: <image>\\n{question} A:\"");
  EXPECT_EQ(sampled.code, 0) << sampled.err;
  EXPECT_NE(sampled.out.find("generated tokens"), std::string::npos) << sampled.out;

  // Bad input: one line naming the problem. (Each run starts LibTorch: keep them few.)
  expect_clean_error(run_iris(base + "\"  \""), "question is empty");
  expect_clean_error(run_iris("ask --model " + dir + " --image " + temp_file("bad.png", "garbage") + " \"What?\""),
                     "bad.png");
  expect_clean_error(run_iris(base + "\"What?\" --max-tokens 0"), "--max-tokens");
  fs::remove(fs::path(dir) / "tokenizer.model");
  expect_clean_error(run_iris(base + "\"What?\""), "tokenizer.model");
}
