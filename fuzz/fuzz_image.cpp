// libFuzzer target: image files (PNG/JPEG/BMP) and PNG text chunks are untrusted input.
// Every byte string must decode or fail with FormatError.
#include <cstdint>

#include "core/error.h"
#include "core/image.h"
#include "core/png_text.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    iris::Image img = iris::decode_image(data, size, "fuzz");
    if (img.width <= 64 && img.height <= 64) (void)iris::resize_bicubic(img, 17, 9);
  } catch (const iris::FormatError&) {
  }
  try {
    (void)iris::read_png_text(data, size, "fuzz");
  } catch (const iris::FormatError&) {
  }
  return 0;
}
