#pragma once
// Everything the studio remembers between runs, as one plain struct persisted as JSON
// (~/.config/iris/studio.json, or $IRIS_STUDIO_CONFIG). No display needed: tests and the
// script runner use it directly.
#include <string>
#include <vector>

#include "core/json_util.h"
#include "pipelines/stable_diffusion.h"

namespace iris::studio {

struct ImagePromptSetting {
  std::string path;
  double scale = 1.0;
  std::string preset = "all";  // all | style | composition
};

struct StudioSettings {
  // Model and adapters (empty: not loaded).
  std::string model;            // diffusers folder or single-file checkpoint
  std::string tokenizer;        // for single files
  std::string device = "cpu";
  int threads = 0;              // 0: all cores
  std::string ip_adapter, image_encoder, style_adapter, sk_adapter;

  // Generate tab.
  std::string prompt, negative;
  std::string sampler = "euler_a";
  bool karras = false;
  int steps = 25;
  double cfg = 7.5;
  bool random_seed = true;      // a fresh seed per Generate press
  int64_t seed = 0;             // used when !random_seed
  int width = 0, height = 0;     // 0x0: the model's native size
  int batch = 1;
  bool use_init = false;
  std::string init_image;
  double strength = 0.75;
  std::vector<ImagePromptSetting> image_prompts;
  std::string style;            // "" = none
  double style_strength = 1.0;
  bool use_skeleton = false;
  std::string skeleton;         // skeleton JSON file the editor loads/saves
  double skeleton_scale = 1.0;
  bool show_skeleton_overlay = true;
  // "Train a new style" (Style section): images folder, name, steps.
  std::string new_style_images;
  std::string new_style_name;
  int new_style_steps = 300;

  // Where results go (the gallery lists this folder).
  std::string output_dir;

  // Ask tab.
  std::string vlm;              // LLaVA folder (or a VISOR one)
  std::string question = "What is in this image?";
  int max_new_tokens = 128;
  std::string ask_image;        // the image asked about (the "Use current result" button sets it too)
  std::string ask_draft;        // ViSpec draft folder, "" = plain decoding
  int ask_draft_chain = 0;      // 0: dynamic draft tree; K: a chain of K tokens
  int ask_visor_budget = -1;    // VISOR folders: -1 = the router decides
  bool ask_var = false;         // VAR, with the model's sink dims ("47,252"; iris vlm sinks)
  std::string ask_var_sink_dims;
  double ask_var_p = 0.6;
  bool ask_locore = false;      // LocoRE
  double ask_locore_beta = 0.15;
  bool ask_sgrs = false;        // saliency-guided rejection sampling
  bool ask_saliency = false;    // heat map of the image patches the answer drew on

  int window_width = 1280, window_height = 800;

  Json to_json() const;
  // Missing keys keep their defaults, unknown keys are ignored (newer files), a present key of
  // the wrong type or an invalid value throws ConfigError naming `what` and the key.
  static StudioSettings from_json(const Json& j, const std::string& what);
  // Throws ConfigError naming the first invalid field.
  void validate(const std::string& what) const;

  // Sets one field from text, as the script runner's `set KEY VALUE` does. Keys are the JSON
  // keys, plus "size" (WIDTHxHEIGHT). Throws ConfigError naming the key for unknown keys and
  // bad values; the settings are unchanged then.
  void set(const std::string& key, const std::string& value);
};

// The settings file: $IRIS_STUDIO_CONFIG when set, else $XDG_CONFIG_HOME/iris/studio.json,
// else ~/.config/iris/studio.json.
std::string default_settings_path();
// The default results folder: $XDG_PICTURES_DIR-less: ~/Pictures/iris (or ./iris-outputs
// without $HOME).
std::string default_output_dir();

// Reads the file; a missing file gives defaults. IoError / FormatError / ConfigError naming it.
StudioSettings load_settings(const std::string& path);
// Writes atomically (temporary file + rename), creating the folder. IoError on failure.
void save_settings(const std::string& path, const StudioSettings& s);

// "47, 252" -> {47, 252} ("" -> {}); ConfigError naming `what` on anything else.
std::vector<int64_t> parse_sink_dims(const std::string& text, const std::string& what);

// The generation request for the current settings: loads the init image, reference images
// and (when `skeleton` is given and use_skeleton is set) attaches the skeleton. `seed` is the
// seed to use (the caller resolves "random"). Throws IoError / FormatError naming the file.
GenerationParams make_generation_params(const StudioSettings& s, uint64_t seed,
                                        const world::Skeleton* skeleton = nullptr);
// The inverse for the gallery's "restore": copies every parameter the metadata carries back
// into `s` (paths of images are not in the metadata and are kept).
void apply_params(const GenerationParams& p, StudioSettings& s);

}  // namespace iris::studio
