#pragma once
// The iris-studio window: tabs Generate, Skeleton, Gallery and Ask drawn with Dear ImGui each
// frame. All work runs on the workers (worker.h); this class only draws, reacts to input and
// hands jobs over. It is also the ScriptHost of scripted sessions.
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "app/studio/gallery.h"
#include "app/studio/gl_texture.h"
#include "app/studio/script.h"
#include "app/studio/settings.h"
#include "app/studio/skeleton_edit.h"
#include "app/studio/worker.h"

namespace iris::studio {

enum class Tab { Generate, Skeleton, Gallery, Ask };

class StudioApp : public ScriptHost {
 public:
  // `persist`: write the settings file when generating and on exit (off for scripted runs, so
  // a demo script never overwrites the user's settings).
  StudioApp(StudioSettings settings, std::string settings_path, bool persist);
  ~StudioApp() override;

  // Draws one frame's UI (between ImGui::NewFrame and ImGui::Render).
  void frame();
  // Files dropped on the window: images become image prompts (or the Ask image on that tab).
  void on_drop(const std::vector<std::string>& paths);
  // Writes the settings file; problems go to the status line.
  void save_settings_file();
  bool wants_fast_frames() const;  // a job runs: redraw often for progress and preview
  std::string take_screenshot_request();  // "" when none

  // ScriptHost
  StudioSettings& settings() override { return s_; }
  void select_tab(const std::string& tab) override;
  void press(const std::string& button) override;
  bool busy() const override;
  int denoise_step() const override;
  std::string last_outcome() const override;
  std::string last_message() const override;
  void request_screenshot(const std::string& path) override { screenshot_request_ = path; }

 private:
  void poll_workers();
  void shortcuts();
  void start_generation();
  void start_ask();
  void restore(const GalleryEntry& e);
  void refresh_gallery();
  void set_notice(const std::string& text, bool error = false);

  void draw_generate_tab();
  void draw_generate_controls();
  void draw_result_viewer();
  void draw_skeleton_tab();
  void draw_gallery_tab();
  void draw_ask_tab();
  void draw_status_line();
  void draw_file_browser();
  // A path field with a "..." button opening the file browser (folders only or by extension).
  bool path_field(const char* label, std::string* path, bool folders, std::vector<std::string> extensions);
  void draw_skeleton_overlay(float x0, float y0, float w, float h, const world::Skeleton& s, bool interactive);
  void open_folder(const std::string& dir);

  StudioSettings s_;
  std::string settings_path_;
  bool persist_ = true;
  GenerationWorker gen_;
  AskWorker ask_;
  StyleTrainWorker style_train_;
  int style_train_reported_ = 0;  // StyleTrainStatus::finished already reported
  void start_style_training();
  void draw_new_style_panel();

  Tab tab_ = Tab::Generate;
  bool tab_requested_ = false;
  std::string notice_;
  bool notice_error_ = false;
  std::string screenshot_request_;
  int reported_gen_jobs_ = 0;
  int asks_started_ = 0, reported_asks_ = 0;
  enum class LastJob { Generate, Ask, StyleTraining };
  LastJob last_job_ = LastJob::Generate;  // whose outcome `expect` reads
  uint64_t last_seed_ = 0;

  // Results of this session (newest last) and what the viewer shows.
  std::vector<GenerationResult> results_;
  int selected_result_ = -1;
  GlTexture result_tex_, preview_tex_;
  bool showing_preview_ = false;

  // Gallery.
  std::vector<GalleryEntry> gallery_;
  std::map<std::string, GlTexture> thumbs_;
  int gallery_selected_ = -1;
  bool gallery_stale_ = true;
  std::string save_copy_path_;

  // Skeleton editor.
  world::Skeleton skeleton_;
  std::vector<SkeletonPreset> presets_;
  int drag_joint_ = -1, selected_joint_ = -1, bone_from_ = -1;
  int edit_mode_ = 0;  // 0 move, 1 add joint, 2 bone
  char new_joint_name_[64] = "joint";

  // Styles offered by the current style adapter.
  std::string styles_for_;
  std::vector<std::string> styles_;
  std::string styles_error_;

  // Ask tab. s_.ask_image names the image; ask_image_path_ is the one loaded into ask_image_.
  std::string ask_image_path_;
  Image ask_image_;
  GlTexture ask_tex_, saliency_tex_;
  int saliency_shown_ = 0;  // AskStatus::finished of the heat map in saliency_tex_
  void set_ask_image(const Image& image, const std::string& path);
  // Loads s_.ask_image unless it is the image already loaded; false (and a notice) on failure.
  bool load_ask_image();

  // File browser popup.
  struct Browser {
    bool open_request = false;
    std::string dir;
    std::string* target = nullptr;
    bool folders = false;
    bool append_image_prompt = false;
    std::vector<std::string> extensions;
    std::vector<std::string> entries;
    std::string error;
  } browser_;

  std::vector<int> children_;  // xdg-open processes to reap
};

}  // namespace iris::studio
