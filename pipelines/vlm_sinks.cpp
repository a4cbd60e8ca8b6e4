#include "pipelines/vlm_sinks.h"

#include <ATen/core/grad_mode.h>

#include "core/error.h"
#include "core/image.h"

namespace iris {

LlamaInput vqa_merged_input(VqaModel& m, const Image& image, const std::string& question) {
  return vqa_prompt_input(m, image, vqa_prompt_ids(m, question));
}

std::vector<SinkDimension> find_llava_sink_dims(VqaModel& m, const std::vector<std::string>& image_paths,
                                                const std::string& question, const SinkDimOptions& opt) {
  if (image_paths.empty()) throw ConfigError("sink dims: no images");
  std::vector<LlamaInput> prompts;
  for (const std::string& path : image_paths) prompts.push_back(vqa_merged_input(m, load_image(path), question));
  return find_sink_dims(m.model->language_model, prompts, opt);
}

}  // namespace iris
