#pragma once
// Scripted studio sessions (`iris-studio --script FILE --screenshot OUT.png`): set fields,
// press buttons, wait for the worker, capture the window. Parsing and the frame-by-frame
// runner live here, away from the GUI, so they are tested without a display.
//
// Script format: one command per line; blank lines and lines starting with '#' are ignored.
//   set KEY VALUE          a setting (StudioSettings::set keys; VALUE is the rest of the line,
//                          surrounding double quotes removed), e.g. `set prompt "a red fox"`
//   add_image_prompt PATH [SCALE [PRESET]]
//   clear_image_prompts
//   tab NAME               generate | skeleton | gallery | ask
//   press BUTTON           generate | cancel | ask | ask_about_result (the result view's "Ask
//                          about it") | train_style (the Style section's "Train style") |
//                          restore (the gallery's first entry) | reuse_seed | random_seed
//   wait [SECONDS]         until the running job ends (default 600 s; timing out is an error)
//   wait_step N [SECONDS]  until the generation has finished denoising step N
//   expect STATE           the last job ended as done | cancelled | failed (else an error)
//   frames N               render N frames
//   screenshot [FILE]      capture the window (default: the --screenshot file)
//   quit
// When the script ends without `screenshot`, the --screenshot file is captured at the end.
#include <string>
#include <vector>

#include "app/studio/settings.h"

namespace iris::studio {

struct ScriptCommand {
  int line = 0;             // 1-based, for messages
  std::string op;
  std::vector<std::string> args;  // `set`: {key, value}
  double seconds = 0;       // wait / wait_step timeout
  int count = 0;            // frames N / wait_step N
};

// Throws FormatError "<what>:<line>: ..." for unknown commands and wrong arguments.
std::vector<ScriptCommand> parse_script(const std::string& text, const std::string& what);
std::vector<ScriptCommand> load_script(const std::string& path);

// What the runner needs from the application.
class ScriptHost {
 public:
  virtual ~ScriptHost() = default;
  virtual StudioSettings& settings() = 0;
  virtual void select_tab(const std::string& tab) = 0;
  // Throws ConfigError when the button cannot be pressed now (e.g. generate with no model).
  virtual void press(const std::string& button) = 0;
  virtual bool busy() const = 0;              // a generation or question is running
  virtual int denoise_step() const = 0;       // steps finished in the running generation
  virtual std::string last_outcome() const = 0;  // done | cancelled | failed | "" (none yet)
  virtual std::string last_message() const { return ""; }  // why the last job failed
  // Captures the window at the end of the current frame.
  virtual void request_screenshot(const std::string& path) = 0;
};

class ScriptRunner {
 public:
  ScriptRunner(std::vector<ScriptCommand> commands, std::string what, std::string default_screenshot);
  // Called once per frame with the current time in seconds; runs commands until one has to
  // wait for later frames. Errors end the script (see error()).
  void step(ScriptHost& host, double now);
  bool finished() const { return finished_; }
  // "" when the script succeeded; else "<file>:<line>: <message>".
  const std::string& error() const { return error_; }

 private:
  bool run_one(ScriptHost& host, const ScriptCommand& c, double now);  // false: wait
  std::vector<ScriptCommand> commands_;
  std::string what_, default_screenshot_;
  size_t next_ = 0;
  bool finished_ = false;
  bool took_screenshot_ = false;
  std::string error_;
  // State of the command in progress.
  bool started_ = false;
  double started_at_ = 0;
  int frames_left_ = 0;
};

}  // namespace iris::studio
