#pragma once
// A new style for an existing PokeFusion style adapter, learned from a folder of images — the
// "train your own style and share it" path (issue 4): only one new style embedding [K, E] is
// trained; the diffusion backbone, the style projection and the decoder style K/V all stay
// frozen (textual inversion, on the style stream instead of the text). The result is a small
// styles/NAME.safetensors that works with the adapter it was trained against (and that
// adapter's model), found by name next to the adapter file.
//
// Data: every PNG/JPEG/BMP in `images` (not recursive), resized to the model's training
// resolution (`resolution`, default: the VAE's sample size). A caption per image from a
// sidecar NAME.txt when there is one, else `caption` (default empty): the content the style
// should NOT absorb belongs in the captions.
// Loss: MSE against the backbone's prediction target (eps / v / x0, from its scheduler
// config), random timesteps, the caption dropped with probability `drop_text`.
// Initialisation: the mean of the bank's embeddings (a point the projection already maps to a
// plausible style). Deterministic for a seed (same build, same threads).
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/progress.h"

namespace iris {

struct NewStyleOptions {
  std::string model;     // Stable Diffusion folder (frozen backbone)
  std::string adapter;   // style-adapter.safetensors (frozen projection + K/V)
  std::string images;    // folder of images in the new style
  std::string name;      // the style's name ([A-Za-z0-9_-]+)
  std::string out;       // output file; "" = styles/NAME.safetensors next to the adapter
  std::string caption;   // caption of images without a sidecar .txt
  std::string description;
  int steps = 300;
  int batch = 4;
  double lr = 5e-3;
  double drop_text = 0.1;
  uint64_t seed = 0;
  int resolution = 0;    // 0: the VAE's sample_size
  int max_images = 500;
  std::string device = "cpu";

  void validate() const;  // ConfigError naming the option
  std::string output_path() const;
};

struct NewStyleCallbacks {
  std::function<void(const std::string&)> log;                   // notes (default: stdout)
  std::function<void(int step, int total, double loss)> on_step;  // after each step
  std::function<bool()> should_cancel;                            // polled between steps
};

struct NewStyleResult {
  std::string path;          // the style file written
  std::vector<double> losses;
  int images = 0;
  bool cancelled = false;    // stopped early; the style so far is still written
};

// Throws IoError / ConfigError / CheckpointError naming the file or option (a folder without
// images, an adapter that does not fit the model, a name already in the adapter's bank).
NewStyleResult train_new_style(const NewStyleOptions& options, const NewStyleCallbacks& callbacks = {});

}  // namespace iris
