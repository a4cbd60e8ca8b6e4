#include "app/studio/script.h"

#include <cerrno>
#include <cstdlib>
#include <initializer_list>
#include <sstream>

#include "core/error.h"
#include "core/mmap_file.h"

namespace iris::studio {

namespace {

std::string trim(const std::string& s) {
  const size_t b = s.find_first_not_of(" \t\r");
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(" \t\r") - b + 1);
}

std::string unquote(const std::string& s) {
  if (s.size() >= 2 && s.front() == '"' && s.back() == '"') return s.substr(1, s.size() - 2);
  return s;
}

double parse_number(const std::string& text, const std::string& where) {
  char* end = nullptr;
  errno = 0;
  const double v = std::strtod(text.c_str(), &end);
  if (text.empty() || *end != 0 || errno == ERANGE || !(v >= 0)) throw FormatError(where + ": \"" + text + "\" is not a non-negative number");
  return v;
}

int parse_count(const std::string& text, const std::string& where) {
  const double v = parse_number(text, where);
  if (v != static_cast<int>(v) || v > 1e6) throw FormatError(where + ": \"" + text + "\" is not a whole number");
  return static_cast<int>(v);
}

bool is_one_of(const std::string& v, std::initializer_list<const char*> list) {
  for (const char* s : list)
    if (v == s) return true;
  return false;
}

constexpr double kDefaultWait = 600;

}  // namespace

std::vector<ScriptCommand> parse_script(const std::string& text, const std::string& what) {
  std::vector<ScriptCommand> out;
  std::istringstream in(text);
  std::string raw;
  int line = 0;
  while (std::getline(in, raw)) {
    ++line;
    const std::string s = trim(raw);
    if (s.empty() || s[0] == '#') continue;
    const std::string where = what + ":" + std::to_string(line);
    ScriptCommand c;
    c.line = line;
    const size_t sp = s.find_first_of(" \t");
    c.op = s.substr(0, sp);
    const std::string rest = sp == std::string::npos ? "" : trim(s.substr(sp));
    std::vector<std::string> words;
    {
      std::istringstream w(rest);
      std::string word;
      while (w >> word) words.push_back(word);
    }
    auto want = [&](size_t lo, size_t hi, const char* usage) {
      if (words.size() < lo || words.size() > hi) throw FormatError(where + ": usage: " + usage);
    };
    if (c.op == "set") {
      if (words.empty()) throw FormatError(where + ": usage: set KEY VALUE");
      const std::string key = words[0];
      c.args = {key, unquote(trim(rest.substr(key.size())))};
    } else if (c.op == "add_image_prompt") {
      want(1, 3, "add_image_prompt PATH [SCALE [PRESET]]");
      c.args = words;
      if (words.size() > 1) parse_number(words[1], where + ": scale");
      if (words.size() > 2 && !is_one_of(words[2], {"all", "style", "composition"}))
        throw FormatError(where + ": preset \"" + words[2] + "\" is not one of all, style, composition");
    } else if (c.op == "clear_image_prompts" || c.op == "quit") {
      want(0, 0, c.op.c_str());
    } else if (c.op == "tab") {
      want(1, 1, "tab generate|skeleton|gallery|ask");
      if (!is_one_of(words[0], {"generate", "skeleton", "gallery", "ask"}))
        throw FormatError(where + ": unknown tab \"" + words[0] + "\" (generate, skeleton, gallery, ask)");
      c.args = words;
    } else if (c.op == "press") {
      want(1, 1, "press generate|cancel|ask|ask_about_result|train_style|restore|reuse_seed|random_seed");
      if (!is_one_of(words[0],
                     {"generate", "cancel", "ask", "ask_about_result", "train_style", "restore", "reuse_seed", "random_seed"}))
        throw FormatError(where + ": unknown button \"" + words[0] +
                          "\" (generate, cancel, ask, ask_about_result, train_style, restore, reuse_seed, random_seed)");
      c.args = words;
    } else if (c.op == "wait") {
      want(0, 1, "wait [SECONDS]");
      c.seconds = words.empty() ? kDefaultWait : parse_number(words[0], where);
    } else if (c.op == "wait_step") {
      want(1, 2, "wait_step N [SECONDS]");
      c.count = parse_count(words[0], where);
      c.seconds = words.size() > 1 ? parse_number(words[1], where) : kDefaultWait;
    } else if (c.op == "expect") {
      want(1, 1, "expect done|cancelled|failed");
      if (!is_one_of(words[0], {"done", "cancelled", "failed"}))
        throw FormatError(where + ": unknown state \"" + words[0] + "\" (done, cancelled, failed)");
      c.args = words;
    } else if (c.op == "frames") {
      want(1, 1, "frames N");
      c.count = parse_count(words[0], where);
    } else if (c.op == "screenshot") {
      want(0, 1, "screenshot [FILE]");
      c.args = words;
    } else {
      throw FormatError(where + ": unknown command \"" + c.op + "\"");
    }
    out.push_back(std::move(c));
  }
  return out;
}

std::vector<ScriptCommand> load_script(const std::string& path) { return parse_script(read_text_file(path), path); }

ScriptRunner::ScriptRunner(std::vector<ScriptCommand> commands, std::string what, std::string default_screenshot)
    : commands_(std::move(commands)), what_(std::move(what)), default_screenshot_(std::move(default_screenshot)) {}

void ScriptRunner::step(ScriptHost& host, double now) {
  while (!finished_) {
    if (next_ == commands_.size()) {
      // Implicit final capture: give the UI two frames to show the last state first.
      if (!took_screenshot_ && !default_screenshot_.empty()) {
        ScriptCommand shot;
        shot.op = "screenshot";
        shot.line = commands_.empty() ? 0 : commands_.back().line;
        commands_.push_back(shot);
        continue;
      }
      finished_ = true;
      return;
    }
    const ScriptCommand& c = commands_[next_];
    bool done = false;
    try {
      done = run_one(host, c, now);
    } catch (const std::exception& e) {
      error_ = what_ + ":" + std::to_string(c.line) + ": " + e.what();
      finished_ = true;
      return;
    }
    if (!done) return;
    ++next_;
    started_ = false;
  }
}

bool ScriptRunner::run_one(ScriptHost& host, const ScriptCommand& c, double now) {
  if (!started_) {
    started_ = true;
    started_at_ = now;
    frames_left_ = c.op == "screenshot" ? 2 : c.count;  // screenshot: let results be drawn first
  }
  if (c.op == "set") {
    host.settings().set(c.args[0], c.args[1]);
  } else if (c.op == "add_image_prompt") {
    ImagePromptSetting ip;
    ip.path = c.args[0];
    if (c.args.size() > 1) ip.scale = std::strtod(c.args[1].c_str(), nullptr);
    if (c.args.size() > 2) ip.preset = c.args[2];
    StudioSettings s = host.settings();
    s.image_prompts.push_back(ip);
    s.validate("add_image_prompt");
    host.settings() = s;
  } else if (c.op == "clear_image_prompts") {
    host.settings().image_prompts.clear();
  } else if (c.op == "tab") {
    host.select_tab(c.args[0]);
  } else if (c.op == "press") {
    host.press(c.args[0]);
  } else if (c.op == "wait" || c.op == "wait_step") {
    const bool reached = c.op == "wait" ? !host.busy() : (host.denoise_step() >= c.count || !host.busy());
    if (!reached) {
      if (now - started_at_ > c.seconds)
        throw Error(c.op + ": still running after " + std::to_string(static_cast<int>(c.seconds)) + " s");
      return false;
    }
  } else if (c.op == "expect") {
    const std::string got = host.last_outcome();
    if (got != c.args[0]) {
      const std::string why = host.last_message();
      throw Error("expected the last job to be " + c.args[0] + ", it is " + (got.empty() ? "none" : got) +
                  (why.empty() ? "" : " (" + why + ")"));
    }
  } else if (c.op == "frames") {
    if (frames_left_-- > 0) return false;
  } else if (c.op == "screenshot") {
    if (frames_left_-- > 0) return false;
    const std::string path = c.args.empty() ? default_screenshot_ : c.args[0];
    if (path.empty()) throw Error("screenshot: no file (give one, or run with --screenshot FILE)");
    host.request_screenshot(path);
    took_screenshot_ = true;
  } else if (c.op == "quit") {
    // Skip the rest; step() still captures the --screenshot file when nothing did.
    next_ = commands_.size() - 1;
  }
  return true;
}

}  // namespace iris::studio
