#include "app/progress_bar.h"

#include <unistd.h>

#include <cstdio>

namespace iris::cli {

ProgressBar::ProgressBar() : tty_(isatty(STDERR_FILENO)), start_(std::chrono::steady_clock::now()) {}

void ProgressBar::update(int step, int total, const std::string& stage) {
  if (stage != stage_) {
    if (drawn_ && tty_) std::fputc('\n', stderr);
    stage_ = stage;
    start_ = std::chrono::steady_clock::now();
    last_decile_ = -1;
  }
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const double per = step > 0 ? elapsed / step : 0.0;
  const double eta = per * (total - step);
  const int width = 30;
  const int filled = total > 0 ? step * width / total : width;
  if (tty_) {
    std::fprintf(stderr, "\r%s [%s%s] %d/%d  %.2f s/it  ETA %.0f s ", stage.c_str(), std::string(filled, '#').c_str(),
                 std::string(width - filled, '.').c_str(), step, total, per, eta);
    drawn_ = true;
  } else {
    const int decile = total > 0 ? step * 10 / total : 10;
    if (decile == last_decile_) return;
    last_decile_ = decile;
    std::fprintf(stderr, "%s %d/%d  %.2f s/it  ETA %.0f s\n", stage.c_str(), step, total, per, eta);
  }
  std::fflush(stderr);
}

void ProgressBar::finish() {
  if (drawn_ && tty_) std::fputc('\n', stderr);
  drawn_ = false;
}

}  // namespace iris::cli
