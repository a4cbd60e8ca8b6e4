#include "core/clip_preprocess_file.h"

#include <filesystem>

#include "core/error.h"
#include "core/json_util.h"

namespace iris {

ClipPreprocessConfig read_clip_preprocess(const std::string& json_path, int encoder_image_size) {
  if (!json_path.empty() && std::filesystem::is_regular_file(json_path)) {
    try {
      return ClipPreprocessConfig::from_json(read_json_file(json_path));
    } catch (...) {
      rethrow_with_context(json_path);
    }
  }
  ClipPreprocessConfig c;
  c.shortest_edge = encoder_image_size;
  c.crop_h = c.crop_w = encoder_image_size;
  return c;
}

}  // namespace iris
