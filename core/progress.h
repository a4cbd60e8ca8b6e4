#pragma once
// Progress and cancellation for long operations (sampling loops, training, batch runs).
// Front ends pass their own callbacks: a terminal bar, the studio's worker, the batch runner.
#include <atomic>
#include <functional>
#include <string>

#include "core/error.h"

namespace iris {

struct Progress {
  // step in [1, total]; `stage` names the phase ("denoise", "decode", "train").
  std::function<void(int step, int total, const std::string& stage)> on_step;
  // Polled between steps; true stops the operation with iris::Cancelled.
  std::function<bool()> should_cancel;

  void report(int step, int total, const std::string& stage) const {
    if (on_step) on_step(step, total, stage);
  }
  void check_cancel() const {
    if (should_cancel && should_cancel()) throw Cancelled("cancelled");
  }
};

// A flag another thread sets (the GUI's Cancel button, a SIGINT handler).
class CancelToken {
 public:
  void cancel() { flag_.store(true); }
  void reset() { flag_.store(false); }
  bool cancelled() const { return flag_.load(); }
  std::function<bool()> as_callback() const {
    return [this] { return cancelled(); };
  }

 private:
  std::atomic<bool> flag_{false};
};

}  // namespace iris
