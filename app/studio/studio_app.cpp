#include "app/studio/studio_app.h"

#include <spawn.h>
#include <sys/wait.h>

#include <algorithm>
#include <cctype>
#include <cfloat>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <random>

#include <imgui.h>
#include <imgui_stdlib.h>

#include "core/error.h"
#include "vlm/visor.h"

extern char** environ;

namespace iris::studio {

namespace fs = std::filesystem;

namespace {

const char* const kSamplers[] = {"euler_a", "euler", "ddim", "dpmpp_2m", "lcm"};
const char* const kPresets[] = {"all", "style", "composition"};
const std::vector<std::string> kImageExts = {".png", ".jpg", ".jpeg", ".bmp"};

// Largest size with the image's aspect that fits in (max_w, max_h); tiny images are scaled up
// by a whole factor so their pixels stay square.
ImVec2 fit(int w, int h, float max_w, float max_h) {
  if (w <= 0 || h <= 0 || max_w <= 0 || max_h <= 0) return {0, 0};
  float s = std::min(max_w / w, max_h / h);
  if (s > 1) s = std::floor(s);
  return {w * s, h * s};
}

ImU32 bone_colour(size_t i) {
  static const ImU32 palette[] = {IM_COL32(255, 80, 80, 255),  IM_COL32(255, 170, 60, 255), IM_COL32(240, 230, 70, 255),
                                  IM_COL32(120, 230, 80, 255), IM_COL32(70, 200, 230, 255), IM_COL32(90, 120, 255, 255),
                                  IM_COL32(200, 100, 255, 255)};
  return palette[i % (sizeof palette / sizeof palette[0])];
}

std::string home_dir() {
  const char* h = std::getenv("HOME");
  return h ? h : "/";
}

}  // namespace

StudioApp::StudioApp(StudioSettings settings, std::string settings_path, bool persist)
    : s_(std::move(settings)), settings_path_(std::move(settings_path)), persist_(persist) {
  if (s_.output_dir.empty()) s_.output_dir = default_output_dir();
  presets_ = skeleton_presets(std::string(IRIS_ASSETS_DIR) + "/skeletons");
  skeleton_ = world::default_skeleton_2d();
  if (!s_.skeleton.empty()) {
    try {
      skeleton_ = world::load_skeleton(s_.skeleton);
    } catch (const std::exception& e) {
      set_notice(e.what(), true);
    }
  }
}

StudioApp::~StudioApp() {
  gen_.cancel();
  ask_.cancel();
  for (int pid : children_) waitpid(pid, nullptr, WNOHANG);
}

void StudioApp::set_notice(const std::string& text, bool error) {
  notice_ = text;
  notice_error_ = error;
}

bool StudioApp::busy() const { return gen_.busy() || ask_.busy() || style_train_.busy(); }

int StudioApp::denoise_step() const { return gen_.status().step; }

bool StudioApp::wants_fast_frames() const { return busy(); }

std::string StudioApp::take_screenshot_request() { return std::exchange(screenshot_request_, std::string()); }

void StudioApp::save_settings_file() {
  if (!persist_) return;
  try {
    save_settings(settings_path_, s_);
  } catch (const std::exception& e) {
    set_notice(std::string("settings not saved: ") + e.what(), true);
  }
}

void StudioApp::select_tab(const std::string& tab) {
  tab_ = tab == "skeleton" ? Tab::Skeleton : tab == "gallery" ? Tab::Gallery : tab == "ask" ? Tab::Ask : Tab::Generate;
  tab_requested_ = true;
  if (tab_ == Tab::Gallery) gallery_stale_ = true;
}

void StudioApp::press(const std::string& button) {
  if (button == "generate") {
    if (gen_.busy()) throw ConfigError("generate: a generation is already running");
    start_generation();
    if (!gen_.busy()) throw ConfigError("generate: " + notice_);
  } else if (button == "cancel") {
    gen_.cancel();
    ask_.cancel();
    style_train_.cancel();
  } else if (button == "ask") {
    start_ask();
    if (!ask_.busy()) throw ConfigError("ask: " + notice_);
  } else if (button == "restore") {
    refresh_gallery();
    if (gallery_.empty()) throw ConfigError("restore: the gallery is empty");
    gallery_selected_ = 0;
    restore(gallery_[0]);
  } else if (button == "reuse_seed") {
    s_.random_seed = false;
    s_.seed = static_cast<int64_t>(last_seed_);
  } else if (button == "random_seed") {
    s_.random_seed = true;
  } else if (button == "train_style") {  // the Style section's "Train style"
    start_style_training();
    if (!style_train_.busy()) throw ConfigError("train_style: " + notice_);
  } else if (button == "ask_about_result") {  // the result view's "Ask about it"
    if (results_.empty()) throw ConfigError("ask_about_result: no result yet");
    const size_t i = selected_result_ >= 0 ? static_cast<size_t>(selected_result_) : 0;
    const auto& r = results_[std::min(i, results_.size() - 1)];
    set_ask_image(r.image, r.path);
    select_tab("ask");
  } else {
    throw ConfigError("unknown button \"" + button + "\"");
  }
}

void StudioApp::start_generation() {
  if (gen_.busy()) return;
  try {
    s_.validate("settings");
    uint64_t seed = static_cast<uint64_t>(s_.seed);
    if (s_.random_seed) seed = std::random_device{}() & 0x7fffffff;
    GenerationJob job;
    job.model = ModelSpec::from(s_);
    job.params = make_generation_params(s_, seed, &skeleton_);
    job.output_dir = s_.output_dir;
    job.threads = s_.threads;
    if (job.model.model.empty()) throw ConfigError("choose a model folder first");
    last_seed_ = seed;
    gen_.start(std::move(job));
    last_job_ = LastJob::Generate;
    showing_preview_ = true;
    set_notice("generating (seed " + std::to_string(seed) + ")");
    save_settings_file();
  } catch (const std::exception& e) {
    set_notice(e.what(), true);
  }
}

void StudioApp::set_ask_image(const Image& image, const std::string& path) {
  ask_image_ = image;
  ask_image_path_ = path;
  s_.ask_image = path;
  ask_tex_.upload(ask_image_, true);
}

bool StudioApp::load_ask_image() {
  if (s_.ask_image.empty() || (s_.ask_image == ask_image_path_ && !ask_image_.empty())) return true;
  try {
    set_ask_image(load_image(s_.ask_image), s_.ask_image);
    return true;
  } catch (const std::exception& e) {
    set_notice(e.what(), true);
    return false;
  }
}

void StudioApp::start_ask() {
  if (ask_.busy()) return;
  if (!load_ask_image()) return;
  try {
    AskJob job;
    job.model = s_.vlm;
    job.image = ask_image_;
    job.question = s_.question;
    job.options = ask_options_from_settings(s_);
    // The budget only means something on a VISOR folder: switching folders keeps it.
    if (!is_visor_folder(job.model)) job.options.visor_budget = -1;
    job.threads = s_.threads;
    if (job.model.empty()) throw ConfigError("choose a LLaVA folder first");
    if (job.image.empty()) throw ConfigError("load an image first (or send a result from Generate)");
    ask_.start(std::move(job));
    ++asks_started_;
    last_job_ = LastJob::Ask;
    set_notice("asking");
  } catch (const std::exception& e) {
    set_notice(e.what(), true);
  }
}

void StudioApp::restore(const GalleryEntry& e) {
  apply_params(e.params, s_);
  if (e.params.skeleton) skeleton_ = *e.params.skeleton;
  set_notice("settings restored from " + fs::path(e.path).filename().string());
}

void StudioApp::refresh_gallery() {
  std::vector<std::string> skipped;
  gallery_ = scan_gallery(s_.output_dir, &skipped);
  if (gallery_.size() > 500) gallery_.resize(500);  // newest first; keep the GUI light
  gallery_selected_ = gallery_.empty() ? -1 : std::min(gallery_selected_, static_cast<int>(gallery_.size()) - 1);
  gallery_stale_ = false;
}

void StudioApp::open_folder(const std::string& dir) {
  char* argv[] = {const_cast<char*>("xdg-open"), const_cast<char*>(dir.c_str()), nullptr};
  pid_t pid = 0;
  if (posix_spawnp(&pid, "xdg-open", nullptr, nullptr, argv, environ) == 0) children_.push_back(pid);
  else set_notice("cannot run xdg-open to show " + dir, true);
}

void StudioApp::on_drop(const std::vector<std::string>& paths) {
  for (const std::string& p : paths) {
    std::string ext = fs::path(p).extension().string();
    std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
    if (std::find(kImageExts.begin(), kImageExts.end(), ext) == kImageExts.end()) continue;
    if (tab_ == Tab::Ask) {
      s_.ask_image = p;
      load_ask_image();
    } else {
      s_.image_prompts.push_back({p, 1.0, "all"});
    }
  }
}

void StudioApp::poll_workers() {
  for (auto it = children_.begin(); it != children_.end();)
    it = waitpid(*it, nullptr, WNOHANG) != 0 ? children_.erase(it) : it + 1;

  Image preview;
  if (gen_.take_preview(preview)) preview_tex_.upload(preview, false);
  std::vector<GenerationResult> fresh = gen_.take_results();
  if (!fresh.empty()) {
    for (GenerationResult& r : fresh) results_.push_back(std::move(r));
    selected_result_ = static_cast<int>(results_.size()) - static_cast<int>(fresh.size());
    result_tex_.upload(results_[selected_result_].image, true);
    showing_preview_ = false;
    gallery_stale_ = true;
  }
  // Report each job once, when it has ended.
  const WorkerStatus st = gen_.status();
  if (!gen_.busy() && st.jobs_started > reported_gen_jobs_) {
    reported_gen_jobs_ = st.jobs_started;
    showing_preview_ = false;
    if (st.state == JobState::Failed) {
      set_notice("generation failed: " + st.message, true);
    } else {
      char line[160];
      std::snprintf(line, sizeof line, "%s in %.1f s", state_name(st.state), st.seconds);
      set_notice(line);
    }
  }
  const StyleTrainStatus ts = style_train_.status();
  if (!style_train_.busy() && ts.finished > style_train_reported_) {
    style_train_reported_ = ts.finished;
    if (ts.state == JobState::Failed) {
      set_notice("style training failed: " + ts.message, true);
    } else {
      set_notice("style \"" + ts.name + "\" " + (ts.state == JobState::Cancelled ? "(stopped early) " : "") +
                 "written to " + ts.path);
      styles_for_.clear();  // list the adapter's styles again: the new one is among them
      s_.style = ts.name;
    }
    std::printf("%s\n", notice_.c_str());
    std::fflush(stdout);
  }
  const AskStatus as = ask_.status();
  if (!ask_.busy() && asks_started_ > reported_asks_) {
    reported_asks_ = asks_started_;
    if (as.state == JobState::Failed) set_notice("question failed: " + as.message, true);
    else set_notice(std::string("answer ") + state_name(as.state));
    // Also on stdout: a terminal (and a scripted session's log) keeps every answer.
    std::printf("answer (%s): %s\n", state_name(as.state), as.state == JobState::Failed ? as.message.c_str() : as.answer.c_str());
    if (!as.stats.empty()) std::printf("%s\n", as.stats.c_str());
    if (!as.saliency.empty()) std::printf("saliency heat map: %dx%d\n", as.saliency.width, as.saliency.height);
    std::fflush(stdout);
  }
}

std::string StudioApp::last_message() const {
  switch (last_job_) {
    case LastJob::Ask: return ask_.status().message;
    case LastJob::StyleTraining: return style_train_.status().message;
    case LastJob::Generate: break;
  }
  return gen_.status().message;
}

std::string StudioApp::last_outcome() const {
  const JobState st = last_job_ == LastJob::StyleTraining ? style_train_.status().state
                      : last_job_ == LastJob::Ask           ? ask_.status().state
                                                            : gen_.status().state;
  if (busy()) return "";
  return st == JobState::Done || st == JobState::Failed || st == JobState::Cancelled ? state_name(st) : "";
}

void StudioApp::shortcuts() {
  const ImGuiIO& io = ImGui::GetIO();
  const bool enter = ImGui::IsKeyPressed(ImGui::GetKeyIndex(ImGuiKey_Enter), false) ||
                     ImGui::IsKeyPressed(ImGui::GetKeyIndex(ImGuiKey_KeyPadEnter), false);
  if (io.KeyCtrl && enter) {
    if (tab_ == Tab::Ask) start_ask();
    else start_generation();
  }
  if (ImGui::IsKeyPressed(ImGui::GetKeyIndex(ImGuiKey_Escape), false) && busy()) {
    gen_.cancel();
    ask_.cancel();
    set_notice("cancelling...");
  }
}

void StudioApp::frame() {
  poll_workers();
  shortcuts();
  if (gallery_stale_ && tab_ == Tab::Gallery) refresh_gallery();

  const ImGuiViewport* vp = ImGui::GetMainViewport();
  ImGui::SetNextWindowPos(vp->WorkPos);
  ImGui::SetNextWindowSize(vp->WorkSize);
  ImGui::Begin("Iris Studio", nullptr,
               ImGuiWindowFlags_NoDecoration | ImGuiWindowFlags_NoMove | ImGuiWindowFlags_NoSavedSettings |
                   ImGuiWindowFlags_NoBringToFrontOnFocus);
  if (ImGui::BeginTabBar("tabs")) {
    struct TabDef { const char* name; Tab tab; } defs[] = {
        {"Generate", Tab::Generate}, {"Skeleton", Tab::Skeleton}, {"Gallery", Tab::Gallery}, {"Ask", Tab::Ask}};
    for (const TabDef& d : defs) {
      const ImGuiTabItemFlags flags = (tab_requested_ && tab_ == d.tab) ? ImGuiTabItemFlags_SetSelected : 0;
      if (ImGui::BeginTabItem(d.name, nullptr, flags)) {
        if (!tab_requested_) {
          if (d.tab == Tab::Gallery && tab_ != Tab::Gallery) gallery_stale_ = true;
          tab_ = d.tab;
        }
        const float status_h = ImGui::GetFrameHeightWithSpacing() + 4;
        ImGui::BeginChild("tab_body", ImVec2(0, -status_h));
        switch (d.tab) {
          case Tab::Generate: draw_generate_tab(); break;
          case Tab::Skeleton: draw_skeleton_tab(); break;
          case Tab::Gallery: draw_gallery_tab(); break;
          case Tab::Ask: draw_ask_tab(); break;
        }
        ImGui::EndChild();
        ImGui::EndTabItem();
      }
    }
    tab_requested_ = false;
    ImGui::EndTabBar();
  }
  draw_status_line();
  draw_file_browser();
  ImGui::End();
}

// ---- Generate ----

void StudioApp::draw_generate_tab() {
  ImGui::BeginChild("controls", ImVec2(440, 0), true);
  draw_generate_controls();
  ImGui::EndChild();
  ImGui::SameLine();
  ImGui::BeginChild("viewer", ImVec2(0, 0), true);
  draw_result_viewer();
  ImGui::EndChild();
}

bool StudioApp::path_field(const char* label, std::string* path, bool folders, std::vector<std::string> extensions) {
  ImGui::PushID(label);
  const float button_w = ImGui::GetFrameHeight() * 1.6f;
  ImGui::SetNextItemWidth(ImGui::GetContentRegionAvail().x - button_w - ImGui::CalcTextSize(label).x - 16);
  const bool changed = ImGui::InputText("##path", path);
  ImGui::SameLine(0, 4);
  if (ImGui::Button("...", ImVec2(button_w, 0))) {
    browser_ = Browser{};
    browser_.open_request = true;
    browser_.target = path;
    browser_.folders = folders;
    browser_.extensions = std::move(extensions);
    std::error_code ec;
    fs::path start = path->empty() ? fs::path(home_dir()) : fs::path(*path);
    if (!fs::is_directory(start, ec)) start = start.parent_path();
    browser_.dir = fs::is_directory(start, ec) ? fs::absolute(start, ec).string() : home_dir();
  }
  ImGui::SameLine(0, 4);
  ImGui::TextUnformatted(label);
  ImGui::PopID();
  return changed;
}

void StudioApp::draw_generate_controls() {
  const bool running = gen_.busy();
  ImGui::TextUnformatted("Prompt");
  ImGui::InputTextMultiline("##prompt", &s_.prompt, ImVec2(-1, ImGui::GetTextLineHeight() * 4));
  ImGui::TextUnformatted("Negative prompt");
  ImGui::InputTextMultiline("##negative", &s_.negative, ImVec2(-1, ImGui::GetTextLineHeight() * 2.5f));

  if (running) {
    if (ImGui::Button("Cancel (Esc)", ImVec2(-1, 32))) gen_.cancel();
  } else if (ImGui::Button("Generate (Ctrl+Enter)", ImVec2(-1, 32))) {
    start_generation();
  }

  if (ImGui::CollapsingHeader("Model", ImGuiTreeNodeFlags_DefaultOpen)) {
    path_field("model", &s_.model, true, {".safetensors", ".ckpt"});
    path_field("tokenizer", &s_.tokenizer, true, {});
    ImGui::SetNextItemWidth(120);
    ImGui::InputText("device", &s_.device);
    ImGui::SameLine();
    ImGui::SetNextItemWidth(100);
    ImGui::InputInt("threads", &s_.threads);
    s_.threads = std::clamp(s_.threads, 0, 256);
    path_field("output", &s_.output_dir, true, {});
  }
  if (ImGui::CollapsingHeader("Sampling", ImGuiTreeNodeFlags_DefaultOpen)) {
    int sampler = 0;
    for (int i = 0; i < 5; ++i)
      if (s_.sampler == kSamplers[i]) sampler = i;
    ImGui::SetNextItemWidth(160);
    if (ImGui::Combo("sampler", &sampler, kSamplers, 5)) s_.sampler = kSamplers[sampler];
    ImGui::SameLine();
    ImGui::Checkbox("Karras", &s_.karras);
    ImGui::SliderInt("steps", &s_.steps, 1, 150);
    float cfg = static_cast<float>(s_.cfg);
    if (ImGui::SliderFloat("CFG", &cfg, 0.0f, 20.0f, "%.1f")) s_.cfg = cfg;
    ImGui::Checkbox("random seed", &s_.random_seed);
    ImGui::SameLine();
    ImGui::BeginDisabled(s_.random_seed);
    ImGui::SetNextItemWidth(140);
    ImGui::InputScalar("##seed", ImGuiDataType_S64, &s_.seed);
    s_.seed = std::max<int64_t>(0, s_.seed);
    ImGui::EndDisabled();
    ImGui::SameLine();
    ImGui::BeginDisabled(last_seed_ == 0 && results_.empty());
    if (ImGui::Button("reuse")) press("reuse_seed");
    ImGui::EndDisabled();
    bool model_size = s_.width == 0;
    if (ImGui::Checkbox("model's size", &model_size)) {
      s_.width = s_.height = model_size ? 0 : 512;
    }
    if (ImGui::IsItemHovered()) ImGui::SetTooltip("the size the model was trained at (512 for SD 1.5, 64 for the starter pack)");
    if (!model_size) {
      ImGui::SameLine();
      int size[2] = {s_.width, s_.height};
      ImGui::SetNextItemWidth(-60);
      if (ImGui::InputInt2("size", size)) {
        s_.width = std::clamp(size[0] / 8 * 8, 8, 4096);
        s_.height = std::clamp(size[1] / 8 * 8, 8, 4096);
      }
    }
    ImGui::SliderInt("batch", &s_.batch, 1, 8);
  }
  if (ImGui::CollapsingHeader("Image to image")) {
    ImGui::Checkbox("use init image", &s_.use_init);
    path_field("init", &s_.init_image, false, kImageExts);
    float strength = static_cast<float>(s_.strength);
    if (ImGui::SliderFloat("strength", &strength, 0.01f, 1.0f, "%.2f")) s_.strength = strength;
  }
  if (ImGui::CollapsingHeader("Image prompt")) {
    path_field("IP-Adapter", &s_.ip_adapter, false, {".safetensors", ".bin"});
    path_field("image encoder", &s_.image_encoder, true, {});
    int remove = -1;
    for (size_t i = 0; i < s_.image_prompts.size(); ++i) {
      ImagePromptSetting& ip = s_.image_prompts[i];
      ImGui::PushID(static_cast<int>(i));
      ImGui::Separator();
      ImGui::TextWrapped("%s", fs::path(ip.path).filename().string().c_str());
      float scale = static_cast<float>(ip.scale);
      ImGui::SetNextItemWidth(150);
      if (ImGui::SliderFloat("scale", &scale, 0.0f, 2.0f, "%.2f")) ip.scale = scale;
      ImGui::SameLine();
      int preset = 0;
      for (int k = 0; k < 3; ++k)
        if (ip.preset == kPresets[k]) preset = k;
      ImGui::SetNextItemWidth(110);
      if (ImGui::Combo("##preset", &preset, kPresets, 3)) ip.preset = kPresets[preset];
      ImGui::SameLine();
      if (ImGui::SmallButton("remove")) remove = static_cast<int>(i);
      ImGui::PopID();
    }
    if (remove >= 0) s_.image_prompts.erase(s_.image_prompts.begin() + remove);
    if (ImGui::Button("Add reference image...")) {
      browser_ = Browser{};
      browser_.open_request = true;
      browser_.append_image_prompt = true;
      browser_.extensions = kImageExts;
      browser_.dir = home_dir();
    }
    ImGui::SameLine();
    ImGui::TextDisabled("(or drop images on the window)");
  }
  if (style_train_.busy()) ImGui::SetNextItemOpen(true);  // show the loss plot while a style trains
  if (ImGui::CollapsingHeader("Style")) {
    path_field("style adapter", &s_.style_adapter, false, {".safetensors"});
    if (styles_for_ != s_.style_adapter) {
      styles_for_ = s_.style_adapter;
      styles_error_.clear();
      try {
        styles_ = list_styles(s_.style_adapter);
      } catch (const std::exception& e) {
        styles_.clear();
        styles_error_ = e.what();
      }
    }
    if (!styles_error_.empty()) ImGui::TextColored(ImVec4(1, 0.4f, 0.4f, 1), "%s", styles_error_.c_str());
    if (ImGui::BeginCombo("style", s_.style.empty() ? "(none)" : s_.style.c_str())) {
      if (ImGui::Selectable("(none)", s_.style.empty())) s_.style.clear();
      for (const std::string& n : styles_)
        if (ImGui::Selectable(n.c_str(), s_.style == n)) s_.style = n;
      ImGui::EndCombo();
    }
    float st = static_cast<float>(s_.style_strength);
    if (ImGui::SliderFloat("style strength", &st, 0.0f, 2.0f, "%.2f")) s_.style_strength = st;
    draw_new_style_panel();
  }
  if (ImGui::CollapsingHeader("Skeleton")) {
    path_field("SK-Adapter", &s_.sk_adapter, false, {".safetensors"});
    ImGui::Checkbox("use the skeleton (edit it in the Skeleton tab)", &s_.use_skeleton);
    float sc = static_cast<float>(s_.skeleton_scale);
    if (ImGui::SliderFloat("skeleton scale", &sc, 0.0f, 2.0f, "%.2f")) s_.skeleton_scale = sc;
    ImGui::Checkbox("overlay on the result", &s_.show_skeleton_overlay);
  }
}

void StudioApp::start_style_training() {
  try {
    NewStyleOptions o;
    o.model = s_.model;
    o.adapter = s_.style_adapter;
    o.images = s_.new_style_images;
    o.name = s_.new_style_name;
    o.steps = s_.new_style_steps;
    o.device = s_.device;
    if (o.model.empty()) throw ConfigError("choose a model first (the style is learned against it)");
    if (o.adapter.empty()) throw ConfigError("choose a style adapter first");
    style_train_.start(o, s_.threads);
    last_job_ = LastJob::StyleTraining;
    set_notice("training the style \"" + o.name + "\"");
  } catch (const std::exception& e) {
    set_notice(e.what(), true);
  }
}

void StudioApp::draw_new_style_panel() {
  if (style_train_.busy()) ImGui::SetNextItemOpen(true);
  if (!ImGui::TreeNode("Train a new style from images")) return;
  path_field("images", &s_.new_style_images, true, {});
  ImGui::SetNextItemWidth(160);
  ImGui::InputText("name", &s_.new_style_name);
  ImGui::SameLine();
  ImGui::SetNextItemWidth(110);
  ImGui::InputInt("steps", &s_.new_style_steps);
  s_.new_style_steps = std::clamp(s_.new_style_steps, 1, 100000);
  if (style_train_.busy()) {
    if (ImGui::Button("Stop training")) style_train_.cancel();
  } else if (ImGui::Button("Train style")) {
    start_style_training();
  }
  const StyleTrainStatus ts = style_train_.status();
  if (!ts.losses.empty()) {
    char label[96];
    std::snprintf(label, sizeof label, "step %d / %d\nloss %.4f", ts.step, ts.total, ts.losses.back());
    ImGui::PlotLines("##loss", ts.losses.data(), static_cast<int>(ts.losses.size()), 0, label, 0.0f, FLT_MAX,
                     ImVec2(-1, 80));
  } else if (style_train_.busy()) {
    ImGui::TextDisabled("loading the model and encoding the images...");
  }
  ImGui::TextDisabled("Only the new style's embedding trains; the model and adapter stay frozen.");
  ImGui::TreePop();
}

void StudioApp::draw_result_viewer() {
  const WorkerStatus st = gen_.status();
  if (gen_.busy()) {
    const float frac = st.total > 0 ? static_cast<float>(st.step) / st.total : 0.0f;
    char label[96];
    if (st.state == JobState::Loading) std::snprintf(label, sizeof label, "loading model...");
    else std::snprintf(label, sizeof label, "step %d / %d  (%.1f s)", st.step, st.total, st.seconds);
    ImGui::ProgressBar(frac, ImVec2(-120, 0), label);
    ImGui::SameLine();
    if (ImGui::Button("Cancel", ImVec2(-1, 0))) gen_.cancel();
  }
  const bool have_result = selected_result_ >= 0 && selected_result_ < static_cast<int>(results_.size());
  const GlTexture& tex = (showing_preview_ && preview_tex_.valid()) || !have_result ? preview_tex_ : result_tex_;
  const float text_h = ImGui::GetTextLineHeightWithSpacing() * 7;
  const ImVec2 avail = ImGui::GetContentRegionAvail();
  if (tex.valid()) {
    // Preview textures are latent-sized: show them at the result's size.
    int w = tex.width(), h = tex.height();
    if (&tex == &preview_tex_ && s_.width > 0) w = s_.width, h = s_.height;
    const ImVec2 size = fit(w, h, avail.x, std::max(64.0f, avail.y - text_h));
    const ImVec2 pos = ImGui::GetCursorScreenPos();
    ImGui::Image(tex.imgui_id(), size);
    const GenerationParams* p = have_result && &tex == &result_tex_ ? &results_[selected_result_].params : nullptr;
    if (s_.show_skeleton_overlay && p && p->skeleton) draw_skeleton_overlay(pos.x, pos.y, size.x, size.y, *p->skeleton, false);
    if (&tex == &preview_tex_ && gen_.busy()) ImGui::TextDisabled("live preview (latent estimate of the current step)");
  } else {
    ImGui::TextDisabled("No result yet: choose a model folder, write a prompt and press Generate.");
  }
  if (!have_result) return;
  const GenerationResult& r = results_[selected_result_];
  ImGui::Separator();
  for (const auto& [k, v] : r.text)
    if (k == "parameters") ImGui::TextWrapped("%s", v.c_str());
  ImGui::TextDisabled("%s", r.path.c_str());
  if (ImGui::Button("Copy seed")) ImGui::SetClipboardText(std::to_string(r.seed).c_str());
  ImGui::SameLine();
  if (ImGui::Button("Reuse seed")) {
    s_.random_seed = false;
    s_.seed = static_cast<int64_t>(r.seed);
  }
  ImGui::SameLine();
  if (ImGui::Button("Open folder")) open_folder(fs::path(r.path).parent_path().string());
  ImGui::SameLine();
  if (ImGui::Button("Ask about it")) {
    set_ask_image(r.image, r.path);
    select_tab("ask");
  }
  if (results_.size() > 1) {
    ImGui::SameLine();
    ImGui::BeginDisabled(selected_result_ == 0);
    if (ImGui::ArrowButton("prev", ImGuiDir_Left)) result_tex_.upload(results_[--selected_result_].image, true);
    ImGui::EndDisabled();
    ImGui::SameLine();
    ImGui::BeginDisabled(selected_result_ + 1 >= static_cast<int>(results_.size()));
    if (ImGui::ArrowButton("next", ImGuiDir_Right)) result_tex_.upload(results_[++selected_result_].image, true);
    ImGui::EndDisabled();
    ImGui::SameLine();
    ImGui::Text("%d / %zu", selected_result_ + 1, results_.size());
  }
}

// ---- Skeleton ----

void StudioApp::draw_skeleton_overlay(float x0, float y0, float w, float h, const world::Skeleton& s, bool interactive) {
  ImDrawList* dl = ImGui::GetWindowDrawList();
  std::string note;
  const world::Skeleton flat = s.is_3d() ? world::project_to_2d(s, nullptr, &note) : s;
  auto at = [&](const world::Joint& j) { return ImVec2(x0 + static_cast<float>(j.x) * w, y0 + static_cast<float>(j.y) * h); };
  for (size_t i = 0; i < flat.edges.size(); ++i) {
    const auto [a, b] = flat.edges[i];
    dl->AddLine(at(flat.joints[a]), at(flat.joints[b]), bone_colour(i), 3.0f);
  }
  for (size_t i = 0; i < flat.joints.size(); ++i) {
    const bool sel = interactive && (static_cast<int>(i) == selected_joint_ || static_cast<int>(i) == bone_from_);
    dl->AddCircleFilled(at(flat.joints[i]), sel ? 7.0f : 5.0f, sel ? IM_COL32(255, 255, 255, 255) : IM_COL32(250, 250, 120, 255));
    if (interactive) dl->AddText(ImVec2(at(flat.joints[i]).x + 7, at(flat.joints[i]).y - 7), IM_COL32(220, 220, 220, 200),
                                 flat.joints[i].name.c_str());
  }
}

void StudioApp::draw_skeleton_tab() {
  ImGui::BeginChild("skeleton_tools", ImVec2(300, 0), true);
  path_field("file", &s_.skeleton, false, {".json"});
  if (ImGui::Button("Load")) {
    try {
      skeleton_ = world::load_skeleton(s_.skeleton);
      selected_joint_ = bone_from_ = -1;
      set_notice("loaded " + s_.skeleton);
    } catch (const std::exception& e) {
      set_notice(e.what(), true);
    }
  }
  ImGui::SameLine();
  if (ImGui::Button("Save")) {
    try {
      if (s_.skeleton.empty()) throw ConfigError("give the skeleton a file name first");
      world::save_skeleton(s_.skeleton, skeleton_);
      set_notice("saved " + s_.skeleton);
    } catch (const std::exception& e) {
      set_notice(e.what(), true);
    }
  }
  ImGui::SameLine();
  if (ImGui::Button("Mirror")) mirror(skeleton_);
  if (ImGui::BeginCombo("preset", "choose...")) {
    for (const SkeletonPreset& p : presets_)
      if (ImGui::Selectable(p.name.c_str())) {
        skeleton_ = p.skeleton;
        selected_joint_ = bone_from_ = -1;
      }
    ImGui::EndCombo();
  }
  ImGui::Separator();
  ImGui::RadioButton("move joints", &edit_mode_, 0);
  ImGui::RadioButton("add joints (click)", &edit_mode_, 1);
  ImGui::RadioButton("bones (click two joints)", &edit_mode_, 2);
  ImGui::InputText("new joint name", new_joint_name_, sizeof new_joint_name_);
  ImGui::BeginDisabled(selected_joint_ < 0);
  if (ImGui::Button("Remove selected joint") ||
      (selected_joint_ >= 0 && ImGui::IsKeyPressed(ImGui::GetKeyIndex(ImGuiKey_Delete), false) &&
       !ImGui::GetIO().WantTextInput)) {
    remove_joint(skeleton_, selected_joint_);
    selected_joint_ = bone_from_ = -1;
  }
  ImGui::EndDisabled();
  ImGui::Checkbox("use for generation", &s_.use_skeleton);
  ImGui::Text("%zu joints, %zu bones", skeleton_.joints.size(), skeleton_.edges.size());
  if (selected_joint_ >= 0 && selected_joint_ < static_cast<int>(skeleton_.joints.size())) {
    const world::Joint& j = skeleton_.joints[selected_joint_];
    ImGui::Text("%s  (%.3f, %.3f)", j.name.c_str(), j.x, j.y);
  }
  ImGui::EndChild();
  ImGui::SameLine();

  ImGui::BeginChild("skeleton_canvas", ImVec2(0, 0), true, ImGuiWindowFlags_NoScrollbar);
  const ImVec2 avail = ImGui::GetContentRegionAvail();
  const float side = std::max(64.0f, std::min(avail.x, avail.y));
  const ImVec2 size = s_.width > 0 ? fit(s_.width, s_.height, side, side) : ImVec2(side, side);
  const ImVec2 pos = ImGui::GetCursorScreenPos();
  ImDrawList* dl = ImGui::GetWindowDrawList();
  if (result_tex_.valid()) dl->AddImage(result_tex_.imgui_id(), pos, ImVec2(pos.x + size.x, pos.y + size.y), ImVec2(0, 0),
                                        ImVec2(1, 1), IM_COL32(255, 255, 255, 110));
  else dl->AddRectFilled(pos, ImVec2(pos.x + size.x, pos.y + size.y), IM_COL32(30, 30, 36, 255));
  dl->AddRect(pos, ImVec2(pos.x + size.x, pos.y + size.y), IM_COL32(120, 120, 130, 255));
  ImGui::InvisibleButton("canvas", size);
  const bool hovered = ImGui::IsItemHovered();
  const ImVec2 m = ImGui::GetIO().MousePos;
  const double mx = (m.x - pos.x) / size.x, my = (m.y - pos.y) / size.y;
  const double pick_radius = 10.0 / size.x;
  if (hovered && ImGui::IsMouseClicked(ImGuiMouseButton_Left)) {
    const int hit = nearest_joint(skeleton_, mx, my, pick_radius);
    if (edit_mode_ == 0) {
      drag_joint_ = selected_joint_ = hit;
    } else if (edit_mode_ == 1 && hit < 0) {
      selected_joint_ = add_joint(skeleton_, new_joint_name_, mx, my);
    } else if (edit_mode_ == 2 && hit >= 0) {
      if (bone_from_ < 0) {
        bone_from_ = hit;
      } else if (hit != bone_from_) {
        toggle_bone(skeleton_, bone_from_, hit);
        bone_from_ = -1;
      }
    } else {
      selected_joint_ = hit;
    }
  }
  if (drag_joint_ >= 0) {
    if (ImGui::IsMouseDown(ImGuiMouseButton_Left)) move_joint(skeleton_, drag_joint_, mx, my);
    else drag_joint_ = -1;
  }
  draw_skeleton_overlay(pos.x, pos.y, size.x, size.y, skeleton_, true);
  ImGui::EndChild();
}

// ---- Gallery ----

void StudioApp::draw_gallery_tab() {
  if (ImGui::Button("Refresh")) refresh_gallery();
  ImGui::SameLine();
  if (ImGui::Button("Open folder")) open_folder(s_.output_dir);
  ImGui::SameLine();
  ImGui::Text("%zu images in %s", gallery_.size(), s_.output_dir.c_str());

  ImGui::BeginChild("thumbs", ImVec2(ImGui::GetContentRegionAvail().x * 0.55f, 0), true);
  const float cell = 132;
  const int per_row = std::max(1, static_cast<int>(ImGui::GetContentRegionAvail().x / (cell + 8)));
  for (size_t i = 0; i < gallery_.size(); ++i) {
    const GalleryEntry& e = gallery_[i];
    ImGui::PushID(static_cast<int>(i));
    if (i % per_row != 0) ImGui::SameLine();
    ImGui::BeginGroup();
    auto it = thumbs_.find(e.path);
    if (it == thumbs_.end() && ImGui::IsRectVisible(ImVec2(cell, cell))) {
      GlTexture t;
      try {
        Image img = load_image(e.path);
        if (img.width > 256 || img.height > 256) {
          const ImVec2 ts = fit(img.width, img.height, 256, 256);
          img = resize_bicubic(img, std::max(1, static_cast<int>(ts.x)), std::max(1, static_cast<int>(ts.y)));
        }
        t.upload(img, true);
      } catch (const std::exception&) {
        // Unreadable now: an empty slot.
      }
      it = thumbs_.emplace(e.path, std::move(t)).first;
    }
    const bool selected = static_cast<int>(i) == gallery_selected_;
    if (it != thumbs_.end() && it->second.valid()) {
      const ImVec2 sz = fit(it->second.width(), it->second.height(), cell, cell);
      if (ImGui::ImageButton(it->second.imgui_id(), sz, ImVec2(0, 0), ImVec2(1, 1), selected ? 3 : 1))
        gallery_selected_ = static_cast<int>(i);
    } else if (ImGui::Button("...", ImVec2(cell, cell))) {
      gallery_selected_ = static_cast<int>(i);
    }
    ImGui::Text("seed %llu", static_cast<unsigned long long>(e.params.seed));
    ImGui::EndGroup();
    ImGui::PopID();
  }
  ImGui::EndChild();
  ImGui::SameLine();
  ImGui::BeginChild("details", ImVec2(0, 0), true);
  if (gallery_selected_ >= 0 && gallery_selected_ < static_cast<int>(gallery_.size())) {
    const GalleryEntry& e = gallery_[gallery_selected_];
    ImGui::TextWrapped("%s", e.parameters.c_str());
    ImGui::TextDisabled("%s", e.path.c_str());
    if (ImGui::Button("Restore settings")) restore(e);
    ImGui::SameLine();
    if (ImGui::Button("Copy seed")) ImGui::SetClipboardText(std::to_string(e.params.seed).c_str());
    ImGui::SameLine();
    if (ImGui::Button("Open folder##entry")) open_folder(fs::path(e.path).parent_path().string());
    ImGui::InputText("##savecopy", &save_copy_path_);
    ImGui::SameLine();
    if (ImGui::Button("Save copy")) {
      std::error_code ec;
      if (save_copy_path_.empty()) set_notice("give a file name to save the copy to", true);
      else if (fs::copy_file(e.path, save_copy_path_, fs::copy_options::overwrite_existing, ec))
        set_notice("saved " + save_copy_path_);
      else set_notice("cannot save " + save_copy_path_ + ": " + ec.message(), true);
    }
  } else {
    ImGui::TextDisabled("Click an image to see its parameters.");
  }
  ImGui::EndChild();
}

// ---- Ask ----

void StudioApp::draw_ask_tab() {
  ImGui::BeginChild("ask_controls", ImVec2(440, 0), true);
  path_field("LLaVA folder", &s_.vlm, true, {});
  path_field("image", &s_.ask_image, false, kImageExts);
  if (ImGui::Button("Load image")) {
    ask_image_path_.clear();  // reload even when the path did not change
    load_ask_image();
  }
  ImGui::SameLine();
  ImGui::BeginDisabled(selected_result_ < 0);
  if (ImGui::Button("Use current result") && selected_result_ >= 0)
    set_ask_image(results_[selected_result_].image, results_[selected_result_].path);
  ImGui::EndDisabled();
  ImGui::TextUnformatted("Question");
  ImGui::InputTextMultiline("##question", &s_.question, ImVec2(-1, ImGui::GetTextLineHeight() * 3));
  ImGui::SliderInt("max tokens", &s_.max_new_tokens, 1, 1024);
  if (ask_.busy()) {
    if (ImGui::Button("Stop (Esc)", ImVec2(-1, 28))) ask_.cancel();
  } else if (ImGui::Button("Ask (Ctrl+Enter)", ImVec2(-1, 28))) {
    start_ask();
  }
  if (ImGui::CollapsingHeader("Decoding", ImGuiTreeNodeFlags_DefaultOpen)) {
    path_field("ViSpec draft", &s_.ask_draft, true, {});
    ImGui::SetNextItemWidth(120);
    ImGui::InputInt("draft chain (0: tree)", &s_.ask_draft_chain);
    s_.ask_draft_chain = std::clamp(s_.ask_draft_chain, 0, 64);
    ImGui::SetNextItemWidth(160);
    ImGui::SliderInt("VISOR budget", &s_.ask_visor_budget, -1, 8, s_.ask_visor_budget < 0 ? "auto (router)" : "%d");
    ImGui::TextDisabled("The draft speeds up LLaVA folders (same answer);\nthe budget applies to VISOR folders.");
  }
  if (ImGui::CollapsingHeader("Hallucination control", ImGuiTreeNodeFlags_DefaultOpen)) {
    ImGui::Checkbox("VAR", &s_.ask_var);
    ImGui::SameLine();
    ImGui::SetNextItemWidth(110);
    ImGui::InputText("sink dims", &s_.ask_var_sink_dims);
    ImGui::SameLine();
    ImGui::SetNextItemWidth(90);
    float p = static_cast<float>(s_.ask_var_p);
    if (ImGui::SliderFloat("p", &p, 0.0f, 1.0f, "%.2f")) s_.ask_var_p = p;
    ImGui::Checkbox("LocoRE", &s_.ask_locore);
    ImGui::SameLine();
    ImGui::SetNextItemWidth(120);
    float beta = static_cast<float>(s_.ask_locore_beta);
    if (ImGui::SliderFloat("beta", &beta, 0.0f, 1.0f, "%.2f")) s_.ask_locore_beta = beta;
    ImGui::Checkbox("SGRS", &s_.ask_sgrs);
    ImGui::SameLine();
    ImGui::Checkbox("saliency heat map", &s_.ask_saliency);
    ImGui::TextDisabled("Sink dims: iris vlm sinks --model DIR --image ...");
  }
  ImGui::EndChild();
  ImGui::SameLine();
  ImGui::BeginChild("ask_view", ImVec2(0, 0), true);
  const AskStatus as = ask_.status();
  if (!as.saliency.empty() && as.finished != saliency_shown_) {
    saliency_tex_.upload(as.saliency, true);
    saliency_shown_ = as.finished;
  } else if (as.saliency.empty() && as.finished != saliency_shown_ && !ask_.busy()) {
    saliency_tex_ = GlTexture{};  // the last answer has no heat map
    saliency_shown_ = as.finished;
  }
  const bool heat = saliency_tex_.valid() && s_.ask_saliency;
  if (ask_tex_.valid()) {
    const ImVec2 avail = ImGui::GetContentRegionAvail();
    const float w = heat ? (avail.x - 8) * 0.5f : avail.x;
    const ImVec2 size = fit(ask_tex_.width(), ask_tex_.height(), w, avail.y * 0.6f);
    ImGui::Image(ask_tex_.imgui_id(), size);
    if (heat) {  // the heat map covers the square the model saw: shown at the picture's height
      ImGui::SameLine();
      ImGui::Image(saliency_tex_.imgui_id(), ImVec2(size.y, size.y));
    }
  }
  if (heat) ImGui::TextDisabled("right: which image patches the answer drew on (saliency)");
  if (ask_.busy() && as.state == JobState::Loading) ImGui::TextDisabled("loading the VLM...");
  ImGui::TextWrapped("%s", as.answer.c_str());
  if (!as.stats.empty()) ImGui::TextDisabled("%s", as.stats.c_str());
  if (as.state == JobState::Failed) ImGui::TextColored(ImVec4(1, 0.4f, 0.4f, 1), "%s", as.message.c_str());
  ImGui::EndChild();
}

// ---- status line and file browser ----

void StudioApp::draw_status_line() {
  ImGui::Separator();
  if (notice_error_) ImGui::TextColored(ImVec4(1, 0.45f, 0.45f, 1), "%s", notice_.c_str());
  else ImGui::TextUnformatted(notice_.c_str());
}

void StudioApp::draw_file_browser() {
  if (browser_.open_request) {
    browser_.open_request = false;
    browser_.entries.clear();
    browser_.error.clear();
    try {
      browser_.entries = list_folder(browser_.dir, browser_.extensions);
    } catch (const std::exception& e) {
      browser_.error = e.what();
    }
    ImGui::OpenPopup("Choose a file");
  }
  ImGui::SetNextWindowSize(ImVec2(560, 420), ImGuiCond_Appearing);
  if (!ImGui::BeginPopupModal("Choose a file", nullptr)) return;
  ImGui::TextWrapped("%s", browser_.dir.c_str());
  std::string go_to;
  if (ImGui::Button("Up")) go_to = fs::path(browser_.dir).parent_path().string();
  ImGui::SameLine();
  if (ImGui::Button("Home")) go_to = home_dir();
  if (browser_.folders) {
    ImGui::SameLine();
    if (ImGui::Button("Choose this folder")) {
      if (browser_.target) *browser_.target = browser_.dir;
      ImGui::CloseCurrentPopup();
    }
  }
  ImGui::SameLine();
  if (ImGui::Button("Close")) ImGui::CloseCurrentPopup();
  if (!browser_.error.empty()) ImGui::TextColored(ImVec4(1, 0.4f, 0.4f, 1), "%s", browser_.error.c_str());
  ImGui::BeginChild("entries", ImVec2(0, 0), true);
  for (const std::string& name : browser_.entries) {
    const bool is_dir = !name.empty() && name.back() == '/';
    if (!ImGui::Selectable(name.c_str(), false, ImGuiSelectableFlags_DontClosePopups)) continue;
    const std::string full = (fs::path(browser_.dir) / (is_dir ? name.substr(0, name.size() - 1) : name)).string();
    if (is_dir) {
      go_to = full;
    } else if (browser_.append_image_prompt) {
      s_.image_prompts.push_back({full, 1.0, "all"});
      ImGui::CloseCurrentPopup();
    } else if (browser_.target) {
      *browser_.target = full;
      ImGui::CloseCurrentPopup();
    }
  }
  ImGui::EndChild();
  ImGui::EndPopup();
  if (!go_to.empty()) {
    browser_.dir = go_to.empty() ? "/" : go_to;
    browser_.error.clear();
    try {
      browser_.entries = list_folder(browser_.dir, browser_.extensions);
    } catch (const std::exception& e) {
      browser_.entries.clear();
      browser_.error = e.what();
    }
  }
}

}  // namespace iris::studio
