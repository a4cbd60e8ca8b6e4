#pragma once
// Shared helpers for tests. CTest runs test cases in parallel processes, so every test gets
// its own scratch folder.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

namespace iris::testing_util {

// A fresh folder unique to the running test case (and process).
inline std::filesystem::path scratch_dir() {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  std::string name = info ? std::string(info->test_suite_name()) + "." + info->name() : "global";
  auto dir = std::filesystem::path(::testing::TempDir()) / ("iris_" + std::to_string(::getpid()) + "_" + name);
  static std::string last;
  if (last != dir.string()) {
    std::filesystem::remove_all(dir);
    last = dir.string();
  }
  std::filesystem::create_directories(dir);
  return dir;
}

inline std::string scratch(const std::string& file) { return (scratch_dir() / file).string(); }

// f() must throw E with `contains` in its message.
template <class E, class F>
void expect_error(F&& f, const std::string& contains) {
  try {
    f();
    ADD_FAILURE() << "no exception; expected one mentioning \"" << contains << "\"";
  } catch (const E& e) {
    EXPECT_NE(std::string(e.what()).find(contains), std::string::npos) << e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "wrong exception type: " << e.what();
  }
}

inline std::string slurp(const std::string& path) {
  std::ifstream f(path);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

#ifdef IRIS_CLI
// Runs the `iris` CLI with `args` (shell syntax), capturing its exit code and output.
struct CliRun {
  int code;
  std::string out, err;
};
inline CliRun run_cli(const std::string& args) {
  const std::string out = scratch("cli.out"), err = scratch("cli.err");
  const int status = std::system((std::string(IRIS_CLI) + " " + args + " >" + out + " 2>" + err).c_str());
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, slurp(out), slurp(err)};
}
#endif

}  // namespace iris::testing_util
