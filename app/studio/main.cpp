// iris-studio: the desktop app (Dear ImGui + GLFW + OpenGL 3). Interactive by default;
// `--script FILE --screenshot OUT.png` runs a scripted session and exits (works under
// `xvfb-run -a` with Mesa's software OpenGL).
#include <chrono>
#include <cstdio>
#include <thread>
#include <tuple>

#include <CLI/CLI.hpp>
#include <GLFW/glfw3.h>
#include <imgui.h>
#include <imgui_impl_glfw.h>
#include <imgui_impl_opengl3.h>

#include "app/studio/gl_texture.h"
#include "app/studio/script.h"
#include "app/studio/studio_app.h"
#include "core/error.h"
#include "core/runtime_env.h"
#include "pipelines/image_size.h"

namespace {

iris::studio::StudioApp* g_app = nullptr;

void on_glfw_error(int code, const char* text) { std::fprintf(stderr, "glfw error %d: %s\n", code, text); }

void on_drop(GLFWwindow*, int count, const char** paths) {
  if (!g_app) return;
  std::vector<std::string> list(paths, paths + count);
  g_app->on_drop(list);
}

struct Options {
  std::string screenshot, script, config, size;
};

int run(const Options& o) {
  using namespace iris::studio;
  const bool scripted = !o.script.empty() || !o.screenshot.empty();
  const std::string config = o.config.empty() ? default_settings_path() : o.config;
  StudioSettings settings;
  try {
    settings = load_settings(config);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "warning: %s (using defaults)\n", e.what());
  }
  std::unique_ptr<ScriptRunner> runner;
  if (scripted) {
    std::vector<ScriptCommand> commands;
    if (!o.script.empty()) commands = load_script(o.script);  // errors before any window opens
    runner = std::make_unique<ScriptRunner>(std::move(commands), o.script.empty() ? "script" : o.script, o.screenshot);
  }
  int width = settings.window_width, height = settings.window_height;
  if (!o.size.empty()) std::tie(width, height) = iris::parse_size_text(o.size, "--size");
  else if (scripted) width = 1280, height = 800;  // screenshots do not depend on the user's window

  glfwSetErrorCallback(on_glfw_error);
  if (!glfwInit()) throw iris::Error("cannot open a display (for headless use run under xvfb-run -a)");
  glfwWindowHint(GLFW_CONTEXT_VERSION_MAJOR, 3);
  glfwWindowHint(GLFW_CONTEXT_VERSION_MINOR, 3);
  glfwWindowHint(GLFW_OPENGL_PROFILE, GLFW_OPENGL_CORE_PROFILE);
  glfwWindowHint(GLFW_OPENGL_FORWARD_COMPAT, GLFW_TRUE);
  if (scripted) glfwWindowHint(GLFW_RESIZABLE, GLFW_FALSE);
  GLFWwindow* window = glfwCreateWindow(width, height, "Iris Studio", nullptr, nullptr);
  if (!window) {
    glfwTerminate();
    throw iris::Error("cannot create an OpenGL 3.3 window");
  }
  glfwMakeContextCurrent(window);
  glfwSwapInterval(scripted ? 0 : 1);

  IMGUI_CHECKVERSION();
  ImGui::CreateContext();
  ImGui::GetIO().IniFilename = nullptr;  // the layout is fixed; settings live in studio.json
  ImGui::StyleColorsDark();
  ImGui_ImplGlfw_InitForOpenGL(window, true);
  ImGui_ImplOpenGL3_Init("#version 330 core");

  std::string error;
  {
    StudioApp app(settings, config, !scripted);
    g_app = &app;
    glfwSetDropCallback(window, on_drop);
    while (!glfwWindowShouldClose(window)) {
      const auto frame_start = std::chrono::steady_clock::now();
      if (scripted) glfwPollEvents();
      else glfwWaitEventsTimeout(app.wants_fast_frames() ? 0.05 : 0.25);
      if (runner) runner->step(app, glfwGetTime());

      ImGui_ImplOpenGL3_NewFrame();
      ImGui_ImplGlfw_NewFrame();
      ImGui::NewFrame();
      app.frame();
      ImGui::Render();
      int fb_w = 0, fb_h = 0;
      glfwGetFramebufferSize(window, &fb_w, &fb_h);
      glViewport(0, 0, fb_w, fb_h);
      glClearColor(0.08f, 0.08f, 0.1f, 1.0f);
      glClear(GL_COLOR_BUFFER_BIT);
      ImGui_ImplOpenGL3_RenderDrawData(ImGui::GetDrawData());
      const std::string shot = app.take_screenshot_request();
      if (!shot.empty()) {
        try {
          iris::save_png(shot, read_framebuffer(fb_w, fb_h), {{"Software", "iris-studio"}});
          std::printf("screenshot: %s (%dx%d)\n", shot.c_str(), fb_w, fb_h);
        } catch (const std::exception& e) {
          error = e.what();
          break;
        }
      }
      glfwSwapBuffers(window);
      if (runner && runner->finished()) {
        error = runner->error();
        break;
      }
      // Scripted runs do not wait for events: cap the frame rate so the worker keeps the CPU.
      if (scripted) {
        const auto budget = std::chrono::milliseconds(app.wants_fast_frames() ? 100 : 16);
        std::this_thread::sleep_until(frame_start + budget);
      }
    }
    if (!scripted) app.save_settings_file();
    g_app = nullptr;
  }  // the app's workers stop and its textures go while the context still exists

  ImGui_ImplOpenGL3_Shutdown();
  ImGui_ImplGlfw_Shutdown();
  ImGui::DestroyContext();
  glfwDestroyWindow(window);
  glfwTerminate();
  if (!error.empty()) throw iris::Error(error);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  iris::ensure_passive_openmp(argc, argv);
  CLI::App cli{"Iris Studio: generate, edit skeletons, browse results and ask questions about images"};
  Options o;
  cli.add_option("--screenshot", o.screenshot, "Run scripted, capture the window to this PNG at the end and exit");
  cli.add_option("--script", o.script, "Script of the session (see app/studio/script.h)")->check(CLI::ExistingFile);
  cli.add_option("--config", o.config, "Settings file (default: $IRIS_STUDIO_CONFIG or ~/.config/iris/studio.json)");
  cli.add_option("--size", o.size, "Window size WIDTHxHEIGHT");
  cli.set_version_flag("--version", std::string("iris-studio ") + IRIS_VERSION);
  try {
    cli.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return cli.exit(e);
  }
  try {
    return run(o);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
