// `iris vlm sinks`: a LLaVA model's sink dimensions (for --var-sink-dims), found from its own
// activations on the given images.
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "app/cli.h"
#include "core/error.h"
#include "pipelines/vlm_sinks.h"

namespace iris::cli {

void add_vlm_command(CLI::App& app) {
  auto* vlm = app.add_subcommand("vlm", "Vision-language model tools");
  vlm->require_subcommand(1);
  auto* cmd = vlm->add_subcommand("sinks", "Rank a LLaVA model's sink dimensions (massive activations) for VAR");
  struct Opts {
    std::string model;
    std::vector<std::string> images;
    std::string question = "Please describe this image in detail.";
    SinkDimOptions sink;
  };
  auto o = std::make_shared<Opts>();
  cmd->add_option("--model", o->model, "LLaVA folder")->required();
  cmd->add_option("--image", o->images, "Image file (repeatable)")->required();
  cmd->add_option("--question", o->question, "Question asked about each image")->capture_default_str();
  cmd->add_option("--tau", o->sink.tau, "Threshold on |x_d| / RMS(x)")->capture_default_str();
  cmd->add_option("--top", o->sink.top, "Dimensions listed")->capture_default_str();
  cmd->add_option("--first-layer", o->sink.first_layer, "First layer examined")->capture_default_str();
  cmd->add_option("--last-layer", o->sink.last_layer, "Last layer examined (< 0: from the end)")->capture_default_str();
  cmd->callback([o] {
    if (!(o->sink.tau > 0)) throw ConfigError("--tau must be > 0");
    VqaModel m = VqaModel::load(o->model);
    const std::vector<SinkDimension> dims = find_llava_sink_dims(m, o->images, o->question, o->sink);
    std::printf("dim\thits\tmean_max\tpeak\n");
    std::string hit_dims;
    for (const SinkDimension& d : dims) {
      std::printf("%lld\t%lld\t%.2f\t%.2f\n", static_cast<long long>(d.dim), static_cast<long long>(d.hits), d.score,
                  d.peak);
      if (d.hits > 0) hit_dims += (hit_dims.empty() ? "" : ",") + std::to_string(d.dim);
    }
    std::printf("--var-sink-dims %s\n", hit_dims.empty() ? "(none reached tau)" : hit_dims.c_str());
  });
}

}  // namespace iris::cli
