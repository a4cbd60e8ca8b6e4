#pragma once
// The CLIP image processor settings an encoder folder ships (preprocessor_config.json), shared by
// the Stable Diffusion loader (IP-Adapter image encoders) and the VLM loader.
#include <string>

#include "core/image.h"

namespace iris {

// Reads `json_path` when it is a file (errors name it); without one, CLIP's defaults resized and
// cropped to `encoder_image_size`, the side the encoder was built for (224 for the released
// encoders, 64 for the starter pack's), rather than CLIP's 224, which a smaller encoder refuses.
// The vision configs already require image_size > 0.
ClipPreprocessConfig read_clip_preprocess(const std::string& json_path, int encoder_image_size);

}  // namespace iris
