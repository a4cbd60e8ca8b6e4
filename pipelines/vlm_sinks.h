#pragma once
// A LLaVA model's sink dimensions from its own activations (METHODS.md "VAR": the dims are
// model-specific and must be found, not assumed): each image is asked the question, the
// merged prompt runs once through the language model, and the hidden dims with massive
// activations (|x_d| / RMS(x) >= tau) in layers 2 .. L-2 are ranked (vlm/var.h).
#include <string>
#include <vector>

#include "pipelines/vqa.h"
#include "vlm/var.h"

namespace iris {

// The merged prompt (image features spliced in, image_mask set) for one image and question.
LlamaInput vqa_merged_input(VqaModel& m, const Image& image, const std::string& question);

std::vector<SinkDimension> find_llava_sink_dims(VqaModel& m, const std::vector<std::string>& image_paths,
                                                const std::string& question, const SinkDimOptions& opt = {});

}  // namespace iris
