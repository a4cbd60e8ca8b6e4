#pragma once
// Background jobs of the studio: a generation worker (model cached between jobs, cancel within
// one denoising step, a cheap live preview of each step, results saved as PNGs with their
// parameters) and a question worker for the Ask tab. The GUI thread polls status() each
// frame and never blocks on a job.
#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <ATen/ATen.h>

#include "core/image.h"
#include "core/progress.h"
#include "pipelines/stable_diffusion.h"

#include "pipelines/style_training.h"
#include "pipelines/vlm_ask.h"

namespace iris::studio {

struct StudioSettings;

// What to load: a change of any field reloads the model.
struct ModelSpec {
  std::string model, tokenizer, device = "cpu", ip_adapter, image_encoder, style_adapter, sk_adapter;
  bool operator==(const ModelSpec& o) const;
  bool operator!=(const ModelSpec& o) const { return !(*this == o); }
  static ModelSpec from(const StudioSettings& s);
};

struct GenerationJob {
  ModelSpec model;
  GenerationParams params;
  std::string output_dir;
  int threads = 0;  // 0: all cores
};

enum class JobState { Idle, Loading, Running, Done, Failed, Cancelled };
// "idle", "loading", "running", "done", "failed", "cancelled"
const char* state_name(JobState s);

struct WorkerStatus {
  JobState state = JobState::Idle;
  int step = 0, total = 0;  // denoising steps of the running job
  std::string message;      // the error of a failed job; warnings
  double seconds = 0;       // wall time of the running (or last) job
  int jobs_started = 0;
};

struct GenerationResult {
  std::string path;          // where the PNG was saved
  Image image;
  uint64_t seed = 0;
  GenerationParams params;   // as rendered (image pixels dropped: names only)
  PngText text;              // the PNG's metadata
};

// Latents (diffusion space, [C, h, w], C = 4) -> RGB at latent resolution with a fixed
// linear map approximating what the SD VAE decodes each channel to. Any C >= 1 works (fewer
// than 4 channels: grey); the map is a preview, not a decoder.
Image latent_preview(const at::Tensor& latent);

// A free file name in `dir`: iris-<YYYYmmdd-HHMMSS>-<seed>.png, then -2, -3, ... when taken.
std::string unique_output_path(const std::string& dir, uint64_t seed);

// Style names a style adapter offers: its bank (from the file's "iris.config" metadata) and
// styles/*.safetensors beside it. Reads only the header. Empty for "".
std::vector<std::string> list_styles(const std::string& style_adapter_path);

class GenerationWorker {
 public:
  GenerationWorker() = default;
  ~GenerationWorker();  // cancels and waits
  GenerationWorker(const GenerationWorker&) = delete;
  GenerationWorker& operator=(const GenerationWorker&) = delete;

  // Starts `job` on the worker thread. Throws ConfigError when a job is still running.
  void start(GenerationJob job);
  // Asks the running job to stop; it stops before its next denoising step.
  void cancel();
  bool busy() const { return busy_.load(); }
  WorkerStatus status() const;
  // The newest step preview when there is one not taken yet.
  bool take_preview(Image& out);
  // Results finished since the last call, in order.
  std::vector<GenerationResult> take_results();
  // Blocks until the running job (if any) ends.
  void wait();

 private:
  void run(GenerationJob job);

  mutable std::mutex mu_;
  std::thread thread_;
  std::atomic<bool> busy_{false};
  CancelToken cancel_;
  WorkerStatus status_;
  Image preview_;
  bool preview_fresh_ = false;
  std::vector<GenerationResult> results_;
  // Touched by the worker thread only (jobs never overlap).
  std::unique_ptr<SdModel> model_;
  ModelSpec loaded_;
};

// The Ask tab: one question at a time about one image, the answer streamed.
struct AskJob {
  std::string model;  // LLaVA folder (or a VISOR one)
  Image image;
  std::string question;
  VlmAskOptions options;  // max tokens, ViSpec draft, VISOR budget, VAR/LocoRE/SGRS, saliency map
  int threads = 0;
};

// The Ask tab's settings as a job's options (sink dims parsed; ConfigError naming the setting).
VlmAskOptions ask_options_from_settings(const StudioSettings& s);

struct AskStatus {
  JobState state = JobState::Idle;
  std::string answer;  // grows while streaming
  std::string stats;   // VlmAskResult::stats, one per line, once done
  std::string message;
  Image saliency;      // the heat map over the image when one was asked for (empty otherwise)
  int finished = 0;    // answers finished by this worker (a new one re-uploads the heat map)
};

class AskWorker {
 public:
  AskWorker();
  ~AskWorker();
  AskWorker(const AskWorker&) = delete;
  AskWorker& operator=(const AskWorker&) = delete;
  void start(AskJob job);  // ConfigError when busy
  void cancel();           // stops after the current token
  bool busy() const { return busy_.load(); }
  AskStatus status() const;
  void wait();

 private:
  void run(AskJob job);
  mutable std::mutex mu_;
  std::thread thread_;
  std::atomic<bool> busy_{false};
  std::atomic<bool> cancel_{false};
  AskStatus status_;
  int finished_ = 0;
  VlmAsker asker_;  // models stay loaded between questions (touched by the worker thread only)
};

// Training a new style from a folder of images in the background (the Style section's
// "Train a new style"): the loss of every step for the plot, cancel between steps (the style so
// far is still written).
struct StyleTrainStatus {
  JobState state = JobState::Idle;
  int step = 0, total = 0;
  std::vector<float> losses;
  std::string path;     // the style file, once written
  std::string name;
  std::string message;  // why it failed
  int finished = 0;     // trainings ended by this worker
};

class StyleTrainWorker {
 public:
  StyleTrainWorker() = default;
  ~StyleTrainWorker();
  StyleTrainWorker(const StyleTrainWorker&) = delete;
  StyleTrainWorker& operator=(const StyleTrainWorker&) = delete;
  void start(NewStyleOptions options, int threads);  // ConfigError when busy or invalid
  void cancel() { cancel_.store(true); }
  bool busy() const { return busy_.load(); }
  StyleTrainStatus status() const;
  void wait();

 private:
  void run(NewStyleOptions options, int threads);
  mutable std::mutex mu_;
  std::thread thread_;
  std::atomic<bool> busy_{false}, cancel_{false};
  StyleTrainStatus status_;
  int finished_ = 0;
};

}  // namespace iris::studio
