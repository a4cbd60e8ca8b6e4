#pragma once
// Shared helpers for tests. CTest runs test cases in parallel processes, so every test gets
// its own scratch folder.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
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

}  // namespace iris::testing_util
