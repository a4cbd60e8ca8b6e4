#pragma once
// 8-bit images: decoding (PNG/JPEG/BMP through stb_image), PNG writing with text metadata,
// Pillow-exact bicubic resampling, and CLIP image preprocessing as transformers does it.
// No LibTorch here: pixel data is plain bytes; clip_preprocess returns plain floats.
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "core/png_text.h"

namespace iris {

// Interleaved 8-bit pixels, rows top to bottom, channels per pixel (1 grey, 3 RGB, 4 RGBA).
struct Image {
  int width = 0, height = 0, channels = 3;
  std::vector<uint8_t> pixels;  // HWC, row-major: pixels[(y * width + x) * channels + c]

  Image() = default;
  // Zero-filled. Throws ShapeError on negative sizes or channels outside 1..4.
  Image(int w, int h, int c = 3);

  bool empty() const { return width == 0 || height == 0; }
  size_t row_bytes() const { return static_cast<size_t>(width) * channels; }
  uint8_t* row(int y) { return pixels.data() + y * row_bytes(); }
  const uint8_t* row(int y) const { return pixels.data() + y * row_bytes(); }
  uint8_t& at(int x, int y, int c) { return pixels[(static_cast<size_t>(y) * width + x) * channels + c]; }
  uint8_t at(int x, int y, int c) const { return pixels[(static_cast<size_t>(y) * width + x) * channels + c]; }
  // Throws ShapeError (prefixed by `what`) unless sizes are sane and pixels.size() matches.
  void check(const std::string& what = "image") const;
};

// Decoding limits: larger images are rejected before any pixel memory is allocated.
constexpr int kMaxImageSide = 16384;
constexpr int64_t kMaxImagePixels = int64_t(1) << 28;

// Reads a PNG, JPEG or BMP file, converted to 3-channel RGB (alpha dropped, grey replicated,
// 16-bit reduced to 8). Throws IoError when the file cannot be read and FormatError naming
// the file for everything else: empty, unknown type, too large, corrupt or truncated.
Image load_image(const std::string& path);
// The same from memory; `what` names the source in errors.
Image decode_image(const uint8_t* bytes, size_t n, const std::string& what);

// PNG encoding (1-4 channels) with text chunks after IHDR (see png_add_text).
std::vector<uint8_t> encode_png(const Image& img, const PngText& text = {}, const std::string& what = "PNG");
// Writes `path` atomically (temporary file + rename). Throws IoError / FormatError / ShapeError.
void save_png(const std::string& path, const Image& img, const PngText& text = {});

// 3-channel copy: grey replicated, alpha dropped (as PIL's convert("RGB")).
Image to_rgb(const Image& img);

// Bicubic resampling bit-exact with Pillow's Image.resize((out_w, out_h), Image.BICUBIC) on
// 8-bit L and RGB images: separable, horizontal pass first into an 8-bit intermediate,
// support widened by the scale on downscaling (antialiasing), 22-bit fixed-point weights.
// Each channel is filtered independently (Pillow premultiplies alpha for RGBA; this does not).
// Throws ShapeError when a size is not positive.
Image resize_bicubic(const Image& img, int out_w, int out_h);

// Centre crop as transformers.image_transforms.center_crop: top = (h - crop_h) / 2,
// left = (w - crop_w) / 2; a dimension smaller than the crop is zero-padded, the image
// placed at ceil((crop - size) / 2).
Image center_crop(const Image& img, int crop_w, int crop_h);

// Output size (width, height) of transformers' get_resize_output_image_size(image,
// shortest_edge, default_to_square=False): the short side becomes `shortest_edge`, the long
// side int(shortest_edge * long / short) (truncated); width is the short side when w <= h.
std::pair<int, int> shortest_edge_size(int width, int height, int shortest_edge);

// transformers.CLIPImageProcessor (v4.40) settings, as in preprocessor_config.json.
struct ClipPreprocessConfig {
  bool do_resize = true;
  // "size": {"shortest_edge": N} (or a bare N), else {"height": H, "width": W} resizes to
  // exactly H x W (then shortest_edge is 0).
  int shortest_edge = 224;
  int size_h = 0, size_w = 0;
  bool do_center_crop = true;
  int crop_h = 224, crop_w = 224;
  bool do_rescale = true;
  double rescale_factor = 1.0 / 255.0;  // applied in double, then rounded to float, as numpy does
  bool do_normalize = true;
  float mean[3] = {0.48145466f, 0.4578275f, 0.40821073f};  // OPENAI_CLIP_MEAN
  float std[3] = {0.26862954f, 0.26130258f, 0.27577711f};  // OPENAI_CLIP_STD

  // Reads a preprocessor_config.json object; absent keys keep the defaults above.
  // Throws ConfigError for wrong types, non-positive sizes or a resample other than
  // bicubic (3).
  static ClipPreprocessConfig from_json(const nlohmann::json& j);
};

// resize (shortest edge, bicubic) -> centre crop -> rescale -> normalise, as
// CLIPImageProcessor.preprocess. Returns float CHW [3, H, W]; H x W is the crop size when
// do_center_crop is set (else the resized size), also stored in *out_h / *out_w if given.
// Grey or RGBA input is converted to RGB first (do_convert_rgb).
std::vector<float> clip_preprocess(const Image& img, const ClipPreprocessConfig& cfg, int* out_h = nullptr,
                                   int* out_w = nullptr);

}  // namespace iris
