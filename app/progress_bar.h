#pragma once
// A terminal progress bar on stderr: "denoise [#########.........] 12/25  1.3 s/it  ETA 17 s".
// Redraws in place on a terminal; prints a line per 10% otherwise (logs, CI).
#include <chrono>
#include <string>

namespace iris::cli {

class ProgressBar {
 public:
  ProgressBar();
  void update(int step, int total, const std::string& stage);
  void finish();

 private:
  bool tty_;
  int last_decile_ = -1;
  bool drawn_ = false;
  std::chrono::steady_clock::time_point start_;
  std::string stage_;
};

}  // namespace iris::cli
