// Every fixture in ../shared/fixtures through `iris parity`'s runners: each output must pass
// (the parity contract), and a fixture of a class with no runner fails, naming the class.
#include <gtest/gtest.h>

#include <filesystem>

#include "pipelines/parity.h"

using namespace iris;

namespace {

std::vector<std::string> fixture_files() {
  std::vector<std::string> out;
  for (const auto& e : std::filesystem::directory_iterator(IRIS_FIXTURES_DIR)) {
    const auto ext = e.path().extension();
    if (ext == ".safetensors" || ext == ".jsonl") out.push_back(e.path().filename().string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

class ParityAll : public ::testing::TestWithParam<std::string> {};

}  // namespace

TEST_P(ParityAll, EveryOutputPasses) {
  ParityOutcome out = run_parity(std::string(IRIS_FIXTURES_DIR) + "/" + GetParam());
  for (const ParityLine& l : out.lines)
    EXPECT_TRUE(l.pass) << GetParam() << ": " << l.name << " max_abs " << l.max_abs << " " << l.detail;
  EXPECT_TRUE(out.class_supported) << "class \"" << out.cls << "\" has no runner";
  EXPECT_GE(out.lines.size(), 1u);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, ParityAll, ::testing::ValuesIn(fixture_files()),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           std::string n = info.param;
                           for (char& c : n)
                             if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
                           return n;
                         });

// An output the runner did not produce is a failing line, never silently dropped.
TEST(ParityReport, OutputsIrisDidNotProduceFail) {
  const Fixture fx = open_fixture(std::string(IRIS_FIXTURES_DIR) + "/clip_text.safetensors");
  std::vector<ParityLine> lines;
  size_t outputs = 0;
  for (const std::string& name : fx.store->names()) outputs += name.rfind("output.", 0) == 0;
  ASSERT_GT(outputs, 1u);
  bool first = true;
  report_outputs(fx, lines, [&](const std::string& key) -> std::optional<ParityLine> {
    if (!first) return std::nullopt;
    first = false;
    ParityLine ok;
    ok.name = key;
    ok.pass = true;
    return ok;
  });
  ASSERT_EQ(lines.size(), outputs);
  EXPECT_TRUE(lines[0].pass);
  for (size_t i = 1; i < lines.size(); ++i) {
    EXPECT_FALSE(lines[i].pass) << lines[i].name;
    EXPECT_EQ(lines[i].detail, "not produced by Iris");
  }
}
