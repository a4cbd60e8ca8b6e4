#include "app/studio/worker.h"

#include <algorithm>
#include <chrono>
#include <ctime>
#include <filesystem>

#include "app/studio/settings.h"
#include "core/error.h"
#include "core/runtime.h"
#include "core/safetensors.h"
#include "pipelines/vqa.h"

namespace iris::studio {

namespace fs = std::filesystem;

bool ModelSpec::operator==(const ModelSpec& o) const {
  return model == o.model && tokenizer == o.tokenizer && device == o.device && ip_adapter == o.ip_adapter &&
         image_encoder == o.image_encoder && style_adapter == o.style_adapter && sk_adapter == o.sk_adapter;
}

ModelSpec ModelSpec::from(const StudioSettings& s) {
  ModelSpec m;
  m.model = s.model;
  m.tokenizer = s.tokenizer;
  m.device = s.device;
  m.ip_adapter = s.ip_adapter;
  m.image_encoder = s.image_encoder;
  m.style_adapter = s.style_adapter;
  m.sk_adapter = s.sk_adapter;
  return m;
}

const char* state_name(JobState s) {
  switch (s) {
    case JobState::Idle: return "idle";
    case JobState::Loading: return "loading";
    case JobState::Running: return "running";
    case JobState::Done: return "done";
    case JobState::Failed: return "failed";
    case JobState::Cancelled: return "cancelled";
  }
  return "?";
}

Image latent_preview(const at::Tensor& latent) {
  if (latent.dim() != 3) throw ShapeError("latent_preview: expected [C, h, w], got " + std::to_string(latent.dim()) + " dims");
  // Rows: R, G, B; columns: latent channels 0..3. A least-squares fit of SD 1.x VAE decodes
  // (channel 0 ~ brightness, 1 ~ red/cyan, 2 ~ green/purple, 3 ~ a negative blue pattern).
  static const float kMap[3][4] = {{0.298f, 0.187f, -0.158f, -0.184f},
                                   {0.207f, 0.286f, 0.189f, -0.271f},
                                   {0.208f, 0.173f, 0.264f, -0.473f}};
  const at::Tensor x = latent.detach().to(at::kCPU, at::kFloat).contiguous();
  const int64_t c = x.size(0), h = x.size(1), w = x.size(2);
  Image img(static_cast<int>(w), static_cast<int>(h), 3);
  const float* p = x.data_ptr<float>();
  for (int64_t i = 0; i < h * w; ++i) {
    for (int ch = 0; ch < 3; ++ch) {
      float v = 0;
      if (c >= 4) {
        for (int k = 0; k < 4; ++k) v += kMap[ch][k] * p[k * h * w + i];
      } else {
        v = 0.5f * p[i];  // grey from the first channel
      }
      // The map gives roughly [-1, 1].
      const float u = (v + 1.0f) * 127.5f;
      img.pixels[i * 3 + ch] = static_cast<uint8_t>(u < 0 ? 0 : u > 255 ? 255 : u + 0.5f);
    }
  }
  return img;
}

std::string unique_output_path(const std::string& dir, uint64_t seed) {
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  localtime_r(&now, &tm);
  char stamp[32];
  std::strftime(stamp, sizeof stamp, "%Y%m%d-%H%M%S", &tm);
  const std::string base = std::string("iris-") + stamp + "-" + std::to_string(seed);
  fs::path p = fs::path(dir) / (base + ".png");
  for (int i = 2; fs::exists(p); ++i) p = fs::path(dir) / (base + "-" + std::to_string(i) + ".png");
  return p.string();
}

std::vector<std::string> list_styles(const std::string& style_adapter_path) {
  std::vector<std::string> names;
  if (style_adapter_path.empty()) return names;
  SafetensorsFile f(style_adapter_path);
  const auto it = f.metadata().find("iris.config");
  if (it != f.metadata().end()) {
    const Json j = parse_json(it->second, style_adapter_path + ": iris.config");
    if (j.contains("styles") && j["styles"].is_array())
      for (const Json& n : j["styles"])
        if (n.is_string()) names.push_back(n.get<std::string>());
  }
  const fs::path dir = fs::path(style_adapter_path).parent_path() / "styles";
  std::error_code ec;
  std::vector<std::string> files;
  for (const auto& e : fs::directory_iterator(dir, ec))
    if (e.path().extension() == ".safetensors") files.push_back(e.path().stem().string());
  std::sort(files.begin(), files.end());
  for (const std::string& n : files)
    if (std::find(names.begin(), names.end(), n) == names.end()) names.push_back(n);
  return names;
}

// ---- GenerationWorker ----

GenerationWorker::~GenerationWorker() {
  cancel();
  wait();
}

void GenerationWorker::start(GenerationJob job) {
  if (busy_.exchange(true)) throw ConfigError("a generation is already running");
  if (thread_.joinable()) thread_.join();  // the previous job has ended (busy was false)
  cancel_.reset();
  {
    std::lock_guard<std::mutex> lock(mu_);
    status_.state = JobState::Loading;
    status_.step = 0;
    status_.total = job.params.steps;
    status_.message.clear();
    status_.seconds = 0;
    ++status_.jobs_started;
    preview_fresh_ = false;
  }
  thread_ = std::thread([this, job = std::move(job)]() mutable { run(std::move(job)); });
}

void GenerationWorker::cancel() { cancel_.cancel(); }

void GenerationWorker::wait() {
  if (thread_.joinable()) thread_.join();
}

WorkerStatus GenerationWorker::status() const {
  std::lock_guard<std::mutex> lock(mu_);
  return status_;
}

bool GenerationWorker::take_preview(Image& out) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!preview_fresh_) return false;
  out = preview_;
  preview_fresh_ = false;
  return true;
}

std::vector<GenerationResult> GenerationWorker::take_results() {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<GenerationResult> out;
  out.swap(results_);
  return out;
}

void GenerationWorker::run(GenerationJob job) {
  const auto t0 = std::chrono::steady_clock::now();
  auto elapsed = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); };
  auto set_state = [&](JobState s, const std::string& message) {
    std::lock_guard<std::mutex> lock(mu_);
    status_.state = s;
    if (!message.empty()) status_.message = message;
    status_.seconds = elapsed();
  };
  try {
    set_threads(job.threads);
    if (job.model.model.empty()) throw ConfigError("no model: choose a model folder first");
    if (!model_ || loaded_ != job.model) {
      model_.reset();  // free the old one before loading the next
      SdLoadOptions lo;
      lo.device = job.model.device;
      lo.tokenizer_dir = job.model.tokenizer;
      lo.ip_adapter = job.model.ip_adapter;
      lo.image_encoder_dir = job.model.image_encoder;
      lo.style_adapter = job.model.style_adapter;
      lo.sk_adapter = job.model.sk_adapter;
      model_ = std::make_unique<SdModel>(SdModel::load(job.model.model, lo));
      loaded_ = job.model;
    }
    if (cancel_.cancelled()) throw Cancelled("cancelled");
    set_state(JobState::Running, "");

    GenerationCallbacks cb;
    cb.progress.should_cancel = cancel_.as_callback();
    cb.progress.on_step = [this, &elapsed](int step, int total, const std::string& stage) {
      if (stage != "denoise") return;
      std::lock_guard<std::mutex> lock(mu_);
      status_.step = step;
      status_.total = total;
      status_.seconds = elapsed();
    };
    cb.preview = [this](const StepPreview& p) {
      Image img = latent_preview(p.x0[0]);  // x0: [B, C, h, w]; the first image of the batch
      std::lock_guard<std::mutex> lock(mu_);
      preview_ = std::move(img);
      preview_fresh_ = true;
    };
    cb.warn = [this](const std::string& w) {
      std::lock_guard<std::mutex> lock(mu_);
      status_.message = "warning: " + w;
    };
    std::vector<GeneratedImage> images = generate(*model_, job.params, cb);

    // The saved parameters keep names, not pixels, and the size rendered (0x0: the model's).
    GenerationParams meta = with_native_size(*model_, job.params);
    meta.init_image.reset();
    for (ImagePrompt& ip : meta.image_prompts) ip.image = Image();
    const bool has_init = job.params.init_image.has_value();
    std::error_code ec;
    fs::create_directories(job.output_dir, ec);
    if (ec) throw IoError(job.output_dir + ": cannot create the output folder: " + ec.message());
    for (GeneratedImage& g : images) {
      GenerationResult r;
      r.seed = g.seed;
      r.params = meta;
      r.params.seed = g.seed;
      // generation_metadata writes init data only when an init image is present.
      GenerationParams for_text = r.params;
      if (has_init) for_text.init_image = Image(1, 1, 3);
      r.text = generation_metadata(for_text, g.seed);
      r.path = unique_output_path(job.output_dir, g.seed);
      save_png(r.path, g.image, r.text);
      r.image = std::move(g.image);
      std::lock_guard<std::mutex> lock(mu_);
      results_.push_back(std::move(r));
    }
    set_state(JobState::Done, "");
  } catch (const Cancelled&) {
    set_state(JobState::Cancelled, "cancelled");
  } catch (const std::exception& e) {
    set_state(JobState::Failed, e.what());
  }
  busy_.store(false);
}

// ---- AskWorker ----

AskWorker::AskWorker() = default;

AskWorker::~AskWorker() {
  cancel();
  wait();
}

void AskWorker::start(AskJob job) {
  if (busy_.exchange(true)) throw ConfigError("a question is already being answered");
  if (thread_.joinable()) thread_.join();
  cancel_.store(false);
  {
    std::lock_guard<std::mutex> lock(mu_);
    status_ = AskStatus{};
    status_.state = JobState::Loading;
  }
  thread_ = std::thread([this, job = std::move(job)]() mutable { run(std::move(job)); });
}

void AskWorker::cancel() { cancel_.store(true); }

void AskWorker::wait() {
  if (thread_.joinable()) thread_.join();
}

AskStatus AskWorker::status() const {
  std::lock_guard<std::mutex> lock(mu_);
  return status_;
}

void AskWorker::run(AskJob job) {
  auto finish = [&](JobState st, const std::string& message) {
    std::lock_guard<std::mutex> lock(mu_);
    status_.state = st;
    status_.message = message;
    status_.finished = ++finished_;
  };
  try {
    set_threads(job.threads);
    if (job.model.empty()) throw ConfigError("no VLM: choose a LLaVA folder first");
    if (job.image.empty()) throw ConfigError("no image: load one or send a result");
    {
      std::lock_guard<std::mutex> lock(mu_);
      status_.state = JobState::Loading;
    }
    asker_.load(job.model);
    {
      std::lock_guard<std::mutex> lock(mu_);
      status_.state = JobState::Running;
    }
    const VlmAskResult r = asker_.ask(job.model, job.image, job.question, job.options, [this](const std::string& delta) {
      std::lock_guard<std::mutex> lock(mu_);
      status_.answer += delta;
      return !cancel_.load();
    });
    std::string stats;
    for (const std::string& line : r.stats) stats += (stats.empty() ? "" : "\n") + line;
    Image heat;
    if (job.options.vqa.saliency_map && r.answer.saliency.defined()) heat = saliency_overlay(job.image, r.answer.saliency);
    {
      std::lock_guard<std::mutex> lock(mu_);
      status_.answer = r.answer.text;
      status_.stats = stats;
      status_.saliency = std::move(heat);
    }
    finish(cancel_.load() ? JobState::Cancelled : JobState::Done, "");
  } catch (const std::exception& e) {
    finish(JobState::Failed, e.what());
  }
  busy_.store(false);
}

// ---- StyleTrainWorker ----

StyleTrainWorker::~StyleTrainWorker() {
  cancel();
  wait();
}

void StyleTrainWorker::wait() {
  if (thread_.joinable()) thread_.join();
}

StyleTrainStatus StyleTrainWorker::status() const {
  std::lock_guard<std::mutex> lock(mu_);
  return status_;
}

void StyleTrainWorker::start(NewStyleOptions options, int threads) {
  options.validate();  // a bad name or folder fails here, before the thread starts
  if (busy_.exchange(true)) throw ConfigError("a style is already training");
  if (thread_.joinable()) thread_.join();
  cancel_.store(false);
  {
    std::lock_guard<std::mutex> lock(mu_);
    status_ = StyleTrainStatus{};
    status_.state = JobState::Loading;
    status_.total = options.steps;
    status_.name = options.name;
    status_.finished = finished_;
  }
  thread_ = std::thread([this, options = std::move(options), threads]() mutable { run(std::move(options), threads); });
}

void StyleTrainWorker::run(NewStyleOptions options, int threads) {
  JobState end = JobState::Done;
  std::string message, path;
  try {
    set_threads(threads);
    NewStyleCallbacks cb;
    cb.log = [](const std::string&) {};
    cb.should_cancel = [this] { return cancel_.load(); };
    cb.on_step = [this](int step, int total, double loss) {
      std::lock_guard<std::mutex> lock(mu_);
      status_.state = JobState::Running;
      status_.step = step;
      status_.total = total;
      status_.losses.push_back(static_cast<float>(loss));
    };
    const NewStyleResult r = train_new_style(options, cb);
    path = r.path;
    if (r.cancelled) end = JobState::Cancelled;
  } catch (const std::exception& e) {
    end = JobState::Failed;
    message = e.what();
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    status_.state = end;
    status_.message = message;
    status_.path = path;
    status_.finished = ++finished_;
  }
  busy_.store(false);
}

VlmAskOptions ask_options_from_settings(const StudioSettings& s) {
  VlmAskOptions o;
  o.vqa.max_new_tokens = s.max_new_tokens;
  o.draft = s.ask_draft;
  o.draft_chain = s.ask_draft_chain;
  o.visor_budget = s.ask_visor_budget;
  FaithfulnessOptions& f = o.vqa.faithfulness;
  f.var = s.ask_var;
  f.var_options.sink_dims = parse_sink_dims(s.ask_var_sink_dims, "ask_var_sink_dims");
  f.var_options.p = s.ask_var_p;
  f.locore = s.ask_locore;
  f.locore_options.beta = s.ask_locore_beta;
  f.sgrs = s.ask_sgrs;
  o.vqa.saliency_map = s.ask_saliency;
  return o;
}

}  // namespace iris::studio
