#include "core/image.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/mmap_file.h"
#include "stb_image.h"
#include "stb_image_write.h"

namespace iris {

// ---------------------------------------------------------------------------------------------
// Image
// ---------------------------------------------------------------------------------------------

namespace {

void check_size(int w, int h, int c, const std::string& what) {
  if (w < 0 || h < 0 || c < 1 || c > 4)
    throw ShapeError(what + ": invalid image size " + std::to_string(w) + "x" + std::to_string(h) + "x" +
                     std::to_string(c));
}

}  // namespace

Image::Image(int w, int h, int c) : width(w), height(h), channels(c) {
  check_size(w, h, c, "image");
  pixels.assign(static_cast<size_t>(w) * h * c, 0);
}

void Image::check(const std::string& what) const {
  check_size(width, height, channels, what);
  if (pixels.size() != static_cast<size_t>(width) * height * channels)
    throw ShapeError(what + ": " + std::to_string(pixels.size()) + " pixel bytes for " + std::to_string(width) + "x" +
                     std::to_string(height) + "x" + std::to_string(channels));
}

// ---------------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------------
namespace {

enum class Kind { Png, Jpeg, Bmp };

const char* kind_name(Kind k) { return k == Kind::Png ? "PNG" : k == Kind::Jpeg ? "JPEG" : "BMP"; }

[[noreturn]] void corrupt(const std::string& what, Kind k, const std::string& why) {
  throw FormatError(join_context(what, std::string("corrupt or truncated ") + kind_name(k) + " (" + why + ")"));
}

uint32_t be16(const uint8_t* p) { return (uint32_t(p[0]) << 8) | p[1]; }
uint32_t be32(const uint8_t* p) { return (be16(p) << 16) | be16(p + 2); }
uint32_t le16(const uint8_t* p) { return uint32_t(p[0]) | (uint32_t(p[1]) << 8); }
uint32_t le32(const uint8_t* p) { return le16(p) | (le16(p + 2) << 16); }

#ifdef FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION
// A few-KB JPEG can legitimately decode to 2^28 pixels, which takes seconds; fuzzers get a
// smaller limit so they stay fast and do not report such files as hangs.
constexpr int64_t kDecodePixelLimit = int64_t(1) << 22;
#else
constexpr int64_t kDecodePixelLimit = kMaxImagePixels;
#endif

void check_dimensions(int64_t w, int64_t h, const std::string& what, Kind k) {
  if (w <= 0 || h <= 0)
    corrupt(what, k, "invalid dimensions " + std::to_string(w) + "x" + std::to_string(h));
  if (w > kMaxImageSide || h > kMaxImageSide || w * h > kDecodePixelLimit)
    throw FormatError(join_context(what, "image too large (" + std::to_string(w) + "x" + std::to_string(h) +
                                             "; the limit is " + std::to_string(kMaxImageSide) + " per side and " +
                                             std::to_string(kDecodePixelLimit) + " pixels)"));
}

// PNG: dimensions from IHDR, then every chunk must be complete up to IEND (stb decodes a
// file whose IEND was cut off without complaint). Critical chunks must have a valid CRC,
// as libpng requires by default; stb never checks CRCs.
void check_png(const uint8_t* p, size_t n, const std::string& what) {
  if (n >= 24 && std::memcmp(p + 12, "IHDR", 4) == 0) check_dimensions(be32(p + 16), be32(p + 20), what, Kind::Png);
  for (const PngChunk& c : png_chunks(p, n, what)) {
#ifndef FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION  // let fuzzers reach the decoder
    if (c.critical() && !c.crc_ok()) corrupt(what, Kind::Png, "CRC mismatch in chunk \"" + c.type + "\"");
#else
    (void)c;
#endif
  }
}

bool is_sof_marker(uint8_t m) { return m >= 0xc0 && m <= 0xcf && m != 0xc4 && m != 0xc8 && m != 0xcc; }

// A DHT segment: tables of (class/id byte, 16 code counts, the symbols). stb_image 2.27
// trusts the counts and writes past its 256-symbol arrays when they add up to more, so
// such tables are rejected here, before stb sees them. Marks the tables it defines.
void check_jpeg_dht(const uint8_t* p, size_t n, bool defined[2][4], const std::string& what) {
  size_t pos = 0;
  while (pos < n) {
    if (n - pos < 17) corrupt(what, Kind::Jpeg, "short Huffman table");
    const uint8_t cls = p[pos] >> 4, id = p[pos] & 15;
    if (cls > 1 || id > 3) corrupt(what, Kind::Jpeg, "bad Huffman table id");
    defined[cls][id] = true;
    size_t symbols = 0;
    for (int i = 1; i <= 16; ++i) symbols += p[pos + i];
    if (symbols > 256) corrupt(what, Kind::Jpeg, "Huffman table with " + std::to_string(symbols) + " symbols");
    pos += 17;
    if (n - pos < symbols) corrupt(what, Kind::Jpeg, "short Huffman table");
    pos += symbols;
  }
}

// An SOS header: each scan component names its DC and AC Huffman tables. stb_image 2.27
// does not track which tables were defined and decodes with uninitialised ones (reading far
// out of bounds), so every table the scan will decode with must have been defined by an
// earlier DHT. Baseline scans use both; progressive DC first scans the DC table, AC scans
// the AC table, DC refinement scans none.
void check_jpeg_sos(const uint8_t* p, size_t n, bool progressive, const bool defined[2][4], const std::string& what) {
  if (n < 1 || p[0] < 1 || p[0] > 4 || n != 4 + 2 * size_t(p[0])) corrupt(what, Kind::Jpeg, "bad scan header");
  const int components = p[0];
  const uint8_t ss = p[1 + 2 * components], ah = p[3 + 2 * components] >> 4;
  const bool uses_dc = !progressive || (ss == 0 && ah == 0);
  const bool uses_ac = !progressive || ss > 0;
  for (int i = 0; i < components; ++i) {
    const uint8_t dc = p[2 + 2 * i] >> 4, ac = p[2 + 2 * i] & 15;
    if (dc > 3 || ac > 3) corrupt(what, Kind::Jpeg, "bad Huffman table id in scan header");
    if ((uses_dc && !defined[0][dc]) || (uses_ac && !defined[1][ac]))
      corrupt(what, Kind::Jpeg, "scan uses an undefined Huffman table");
  }
}

// JPEG: walks the marker segments from SOI, skipping each scan's entropy-coded data, and
// requires an EOI marker, so a cut file is rejected even where a decoder would fill in the
// missing blocks. Bytes after EOI (some cameras append data) are allowed. Also checks what
// stb_image would trust: frame size, Huffman tables.
void check_jpeg(const uint8_t* p, size_t n, const std::string& what) {
  const auto truncated = [&] { corrupt(what, Kind::Jpeg, "file ends before the EOI marker"); };
  bool progressive = false;
  bool defined[2][4] = {};  // Huffman tables seen: [DC/AC][id]
  size_t pos = 2;           // after SOI
  for (;;) {
    if (pos >= n) truncated();
    if (p[pos] != 0xff) corrupt(what, Kind::Jpeg, "expected a marker at offset " + std::to_string(pos));
    while (pos < n && p[pos] == 0xff) ++pos;  // fill bytes
    if (pos >= n) truncated();
    const uint8_t marker = p[pos++];
    if (marker == 0xd9) return;                                          // EOI
    if (marker == 0x01 || (marker >= 0xd0 && marker <= 0xd7)) continue;  // no payload
    if (n - pos < 2) truncated();
    const size_t len = be16(p + pos);
    if (len < 2) corrupt(what, Kind::Jpeg, "bad segment length at offset " + std::to_string(pos));
    if (n - pos < len) truncated();
    const uint8_t* seg = p + pos + 2;
    if (is_sof_marker(marker)) {
      if (len >= 7) check_dimensions(be16(seg + 3), be16(seg + 1), what, Kind::Jpeg);
      progressive = marker == 0xc2 || marker == 0xc6 || marker == 0xca || marker == 0xce;
    } else if (marker == 0xc4) {
      check_jpeg_dht(seg, len - 2, defined, what);
    } else if (marker == 0xda) {
      check_jpeg_sos(seg, len - 2, progressive, defined, what);
    }
    pos += len;
    if (marker != 0xda) continue;
    // Entropy-coded data: 0xFF is followed by 0x00 (stuffing), a restart marker or more
    // 0xFF fill; anything else is the next marker.
    for (;;) {
      const void* ff = std::memchr(p + pos, 0xff, n - pos);
      if (!ff) truncated();
      pos = static_cast<const uint8_t*>(ff) - p;
      if (pos + 1 >= n) truncated();
      const uint8_t next = p[pos + 1];
      if (next == 0x00 || (next >= 0xd0 && next <= 0xd7)) {
        pos += 2;
      } else if (next == 0xff) {
        pos += 1;
      } else {
        break;  // marker at pos
      }
    }
  }
}

// BMP: stb fills a short pixel array with zeros instead of failing, so compare the file
// size with what the header implies (uncompressed and bit-field layouts; stb itself
// rejects RLE-compressed BMPs).
void check_bmp(const uint8_t* p, size_t n, const std::string& what) {
  if (n < 26) corrupt(what, Kind::Bmp, "file ends inside the header");
  const uint32_t offset = le32(p + 10), header = le32(p + 14);
  int64_t w, h;
  uint32_t bpp, compression = 0;
  if (header == 12) {  // OS/2 BITMAPCOREHEADER: 16-bit sizes
    w = le16(p + 18);
    h = le16(p + 20);
    bpp = le16(p + 24);
  } else if (header >= 40) {
    if (n < 34) corrupt(what, Kind::Bmp, "file ends inside the header");
    w = static_cast<int32_t>(le32(p + 18));
    h = static_cast<int32_t>(le32(p + 22));  // negative: rows stored top-down
    bpp = le16(p + 28);
    compression = le32(p + 30);
  } else {
    corrupt(what, Kind::Bmp, "unsupported header size " + std::to_string(header));
  }
  h = h < 0 ? -h : h;
  check_dimensions(w, h, what, Kind::Bmp);
  const bool plain = compression == 0 || compression == 3 || compression == 6;
  if (!plain || bpp == 0 || bpp > 32) return;  // stb decides
  const int64_t stride = (w * bpp + 31) / 32 * 4;
  // The last row's padding is not required.
  const int64_t needed = int64_t(offset) + stride * (h - 1) + (w * bpp + 7) / 8;
  if (static_cast<int64_t>(n) < needed)
    corrupt(what, Kind::Bmp, "file has " + std::to_string(n) + " bytes, the header needs " + std::to_string(needed));
}

// stb's short reasons, made readable where they are cryptic.
std::string stb_reason() {
  const char* r = stbi_failure_reason();
  if (!r) return "unknown error";
  if (std::strcmp(r, "outofdata") == 0) return "unexpected end of data";
  if (std::strcmp(r, "outofmem") == 0) return "out of memory";
  return r;
}

struct StbFree {
  void operator()(uint8_t* p) const { stbi_image_free(p); }
};

}  // namespace

Image decode_image(const uint8_t* bytes, size_t n, const std::string& what) {
  if (n == 0) throw FormatError(join_context(what, "empty file, not an image"));
  Kind kind;
  if (is_png_signature(bytes, n)) {
    kind = Kind::Png;
    check_png(bytes, n, what);
  } else if (n >= 3 && bytes[0] == 0xff && bytes[1] == 0xd8 && bytes[2] == 0xff) {
    kind = Kind::Jpeg;
    check_jpeg(bytes, n, what);
  } else if (n >= 2 && bytes[0] == 'B' && bytes[1] == 'M') {
    kind = Kind::Bmp;
    check_bmp(bytes, n, what);
  } else {
    throw FormatError(join_context(what, "not an image (unknown image type; PNG, JPEG and BMP are supported)"));
  }
  if (n > static_cast<size_t>(INT32_MAX)) throw FormatError(join_context(what, "file too large"));
  const int len = static_cast<int>(n);

  // The header checks above already bounded the size; stb's own view is checked as well
  // before anything large is allocated.
  int w = 0, h = 0, comp = 0;
  if (!stbi_info_from_memory(bytes, len, &w, &h, &comp)) corrupt(what, kind, stb_reason());
  check_dimensions(w, h, what, kind);

  std::unique_ptr<uint8_t, StbFree> data(stbi_load_from_memory(bytes, len, &w, &h, &comp, 3));
  if (!data) corrupt(what, kind, stb_reason());
  Image img(w, h, 3);
  std::memcpy(img.pixels.data(), data.get(), img.pixels.size());
  return img;
}

Image load_image(const std::string& path) {
  MappedFile f(path);
  return decode_image(f.data(), f.size(), path);
}

// ---------------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------------

std::vector<uint8_t> encode_png(const Image& img, const PngText& text, const std::string& what) {
  img.check(what);
  if (img.empty()) throw ShapeError(what + ": cannot write an empty image as PNG");
  if (img.width > kMaxImageSide || img.height > kMaxImageSide)
    throw ShapeError(what + ": image too large to write");
  std::vector<uint8_t> png;
  const auto sink = [](void* ctx, void* data, int size) {
    auto* out = static_cast<std::vector<uint8_t>*>(ctx);
    out->insert(out->end(), static_cast<const uint8_t*>(data), static_cast<const uint8_t*>(data) + size);
  };
  if (!stbi_write_png_to_func(sink, &png, img.width, img.height, img.channels, img.pixels.data(),
                              static_cast<int>(img.row_bytes())))
    throw Error(what + ": PNG encoding failed (out of memory?)");
  return png_add_text(png.data(), png.size(), text, what);
}

void save_png(const std::string& path, const Image& img, const PngText& text) {
  const std::vector<uint8_t> bytes = encode_png(img, text, path);
  write_file_atomic(path, bytes.data(), bytes.size());
}

Image to_rgb(const Image& img) {
  img.check();
  if (img.channels == 3) return img;
  Image out(img.width, img.height, 3);
  const size_t n = static_cast<size_t>(img.width) * img.height;
  for (size_t i = 0; i < n; ++i) {
    const uint8_t* s = &img.pixels[i * img.channels];
    uint8_t* d = &out.pixels[i * 3];
    if (img.channels <= 2) {
      d[0] = d[1] = d[2] = s[0];  // grey (+ alpha)
    } else {
      d[0] = s[0], d[1] = s[1], d[2] = s[2];  // RGBA: alpha dropped
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Bicubic resampling (Pillow's algorithm, libImaging/Resample.c semantics)
// ---------------------------------------------------------------------------------------------
namespace {

// Fixed-point weights: 32 bits minus 8 for the pixel value minus 2 of headroom.
constexpr int kPrecisionBits = 32 - 8 - 2;

// Keys' cubic convolution kernel with a = -0.5, support 2. The expressions keep Pillow's
// evaluation order so the double results (and hence the rounded weights) are identical.
double bicubic_kernel(double x) {
  constexpr double a = -0.5;
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

// For output positions first .. first + count - 1 along one axis: the first input index, the
// number of taps and the fixed-point weights (padded to a common stride). Each output
// position's weights depend only on its own index, so any window of the output can be
// computed alone and equals that part of the full result.
struct AxisWeights {
  int stride = 0;
  std::vector<int> first, count;
  std::vector<int32_t> w;  // [out - first][stride]
};

AxisWeights axis_weights(int in_size, int out_size, int out_first, int out_count) {
  // The box is the whole input: scale = in / out. Pillow computes (double)(float)in, which
  // is exact for sizes below 2^24.
  const double scale = static_cast<double>(in_size) / out_size;
  // On downscaling the kernel is stretched by the scale (antialiasing).
  const double filterscale = std::max(scale, 1.0);
  const double support = 2.0 * filterscale;
  AxisWeights a;
  a.stride = static_cast<int>(std::ceil(support)) * 2 + 1;
  a.first.resize(out_count);
  a.count.resize(out_count);
  a.w.assign(static_cast<size_t>(out_count) * a.stride, 0);
  std::vector<double> k(a.stride);
  for (int j = 0; j < out_count; ++j) {
    const double center = (out_first + j + 0.5) * scale;
    // Truncating casts, then clamping, exactly as Pillow rounds the window ends.
    int lo = static_cast<int>(center - support + 0.5);
    if (lo < 0) lo = 0;
    int hi = static_cast<int>(center + support + 0.5);
    if (hi > in_size) hi = in_size;
    const int taps = hi - lo;
    double sum = 0.0;
    for (int t = 0; t < taps; ++t) {
      k[t] = bicubic_kernel((t + lo - center + 0.5) * (1.0 / filterscale));
      sum += k[t];
    }
    int32_t* out = &a.w[static_cast<size_t>(j) * a.stride];
    for (int t = 0; t < taps; ++t) {
      const double v = sum != 0.0 ? k[t] / sum : k[t];
      // Round half away from zero, as Pillow's normalize_coeffs_8bpc.
      out[t] = static_cast<int32_t>(v < 0 ? -0.5 + v * (1 << kPrecisionBits) : 0.5 + v * (1 << kPrecisionBits));
    }
    a.first[j] = lo;
    a.count[j] = taps;
  }
  return a;
}

// Back to 8 bits: arithmetic shift (floor), then clamp, like Pillow's clip8 table.
inline uint8_t clip8(int32_t acc) {
  const int32_t v = acc >> kPrecisionBits;
  return static_cast<uint8_t>(v < 0 ? 0 : v > 255 ? 255 : v);
}

constexpr int32_t kRoundHalf = 1 << (kPrecisionBits - 1);

// Horizontal pass over input rows [row0, row0 + rows): one output column per entry of `a`.
Image resample_rows(const Image& in, int row0, int rows, const AxisWeights& a) {
  const int c = in.channels, out_w = static_cast<int>(a.first.size());
  Image out(out_w, rows, c);
  for (int y = 0; y < rows; ++y) {
    const uint8_t* src = in.row(row0 + y);
    uint8_t* dst = out.row(y);
    for (int x = 0; x < out_w; ++x) {
      const int32_t* k = &a.w[static_cast<size_t>(x) * a.stride];
      const uint8_t* s = src + static_cast<size_t>(a.first[x]) * c;
      for (int ch = 0; ch < c; ++ch) {
        int32_t acc = kRoundHalf;
        for (int t = 0; t < a.count[x]; ++t) acc += s[t * c + ch] * k[t];
        dst[x * c + ch] = clip8(acc);
      }
    }
  }
  return out;
}

// Vertical pass: one output row per entry of `a`; input row r of the full image is row
// r - row_offset of `in`.
Image resample_columns(const Image& in, const AxisWeights& a, int row_offset) {
  const size_t rb = in.row_bytes();
  const int out_h = static_cast<int>(a.first.size());
  Image out(in.width, out_h, in.channels);
  std::vector<int32_t> acc(rb);
  for (int y = 0; y < out_h; ++y) {
    std::fill(acc.begin(), acc.end(), kRoundHalf);
    const int32_t* k = &a.w[static_cast<size_t>(y) * a.stride];
    // Integer sums: accumulating row by row gives the same result as Pillow's per-pixel loop.
    for (int t = 0; t < a.count[y]; ++t) {
      const uint8_t* src = in.row(a.first[y] - row_offset + t);
      for (size_t i = 0; i < rb; ++i) acc[i] += src[i] * k[t];
    }
    uint8_t* dst = out.row(y);
    for (size_t i = 0; i < rb; ++i) dst[i] = clip8(acc[i]);
  }
  return out;
}

Image copy_window(const Image& img, int x0, int y0, int w, int h) {
  Image out(w, h, img.channels);
  for (int y = 0; y < h; ++y)
    std::memcpy(out.row(y), img.row(y0 + y) + static_cast<size_t>(x0) * img.channels, out.row_bytes());
  return out;
}

// The window [x0, x0 + w) x [y0, y0 + h) of resize_bicubic(img, out_w, out_h), computed
// without the rest of the output.
Image resize_window(const Image& img, int out_w, int out_h, int x0, int y0, int w, int h) {
  // Like Pillow, a pass whose size does not change is skipped (it would be the identity).
  const bool horizontal = out_w != img.width;
  const bool vertical = out_h != img.height;
  // The input rows the vertical pass reads; only those go through the horizontal pass.
  AxisWeights wv;
  int row0 = y0, rows = h;
  if (vertical) {
    wv = axis_weights(img.height, out_h, y0, h);
    row0 = wv.first.front();
    rows = wv.first.back() + wv.count.back() - row0;
  }
  Image tmp = horizontal ? resample_rows(img, row0, rows, axis_weights(img.width, out_w, x0, w))
                         : copy_window(img, x0, row0, w, rows);
  return vertical ? resample_columns(tmp, wv, row0) : tmp;
}

}  // namespace

Image resize_bicubic(const Image& img, int out_w, int out_h) {
  img.check("resize_bicubic");
  if (out_w <= 0 || out_h <= 0 || img.empty())
    throw ShapeError("resize_bicubic: cannot resize " + std::to_string(img.width) + "x" + std::to_string(img.height) +
                     " to " + std::to_string(out_w) + "x" + std::to_string(out_h));
  return resize_window(img, out_w, out_h, 0, 0, out_w, out_h);
}

// ---------------------------------------------------------------------------------------------
// Crop and CLIP preprocessing
// ---------------------------------------------------------------------------------------------
namespace {

// Along one axis: where the copied span starts in the source and in the destination, and
// its length. A larger source is cropped at floor((size - crop) / 2); a smaller one is
// placed at ceil((crop - size) / 2), which is where transformers' zero padding puts it.
struct Span {
  int src, dst, len;
};

Span crop_span(int size, int crop) {
  if (size >= crop) return {(size - crop) / 2, 0, crop};
  return {0, (crop - size + 1) / 2, size};
}


// Copies all of `part` into `dst` with its top-left corner at (x, y); it must fit.
void paste(const Image& part, int x, int y, Image* dst) {
  for (int r = 0; r < part.height; ++r)
    std::memcpy(dst->row(y + r) + static_cast<size_t>(x) * dst->channels, part.row(r), part.row_bytes());
}

}  // namespace

Image center_crop(const Image& img, int crop_w, int crop_h) {
  img.check("center_crop");
  if (crop_w <= 0 || crop_h <= 0)
    throw ShapeError("center_crop: invalid crop size " + std::to_string(crop_w) + "x" + std::to_string(crop_h));
  const Span sx = crop_span(img.width, crop_w), sy = crop_span(img.height, crop_h);
  Image out(crop_w, crop_h, img.channels);
  if (sx.len > 0 && sy.len > 0) paste(copy_window(img, sx.src, sy.src, sx.len, sy.len), sx.dst, sy.dst, &out);
  return out;
}

std::pair<int, int> shortest_edge_size(int width, int height, int shortest_edge) {
  if (width <= 0 || height <= 0 || shortest_edge <= 0)
    throw ShapeError("shortest_edge_size: invalid sizes " + std::to_string(width) + "x" + std::to_string(height) +
                     " -> " + std::to_string(shortest_edge));
  const bool width_short = width <= height;
  const int64_t shorter = width_short ? width : height, longer = width_short ? height : width;
  // Python: int(size * long / short), a float64 true division then truncation.
  const int new_long = static_cast<int>(static_cast<double>(int64_t(shortest_edge) * longer) / shorter);
  return width_short ? std::make_pair(shortest_edge, new_long) : std::make_pair(new_long, shortest_edge);
}

namespace {

[[noreturn]] void config_error(const std::string& why) {
  throw ConfigError("image processor config: " + why);
}

int positive_int(const nlohmann::json& v, const std::string& name) {
  if (!v.is_number_integer() || v.get<int64_t>() <= 0 || v.get<int64_t>() > kMaxImageSide)
    config_error("\"" + name + "\" must be a positive integer up to " + std::to_string(kMaxImageSide) +
                 ", got " + v.dump());
  return v.get<int>();
}

bool get_bool(const nlohmann::json& j, const char* key, bool def) {
  if (!j.contains(key) || j[key].is_null()) return def;
  if (!j[key].is_boolean()) config_error(std::string("\"") + key + "\" must be true or false");
  return j[key].get<bool>();
}

void get_triple(const nlohmann::json& j, const char* key, float out[3]) {
  if (!j.contains(key) || j[key].is_null()) return;
  const nlohmann::json& v = j[key];
  if (v.is_number()) {  // a single value applies to all channels
    out[0] = out[1] = out[2] = v.get<float>();
    return;
  }
  if (!v.is_array() || v.size() != 3) config_error(std::string("\"") + key + "\" must be 3 numbers");
  for (int i = 0; i < 3; ++i) {
    if (!v[i].is_number()) config_error(std::string("\"") + key + "\" must be 3 numbers");
    out[i] = v[i].get<float>();
  }
}

}  // namespace

ClipPreprocessConfig ClipPreprocessConfig::from_json(const nlohmann::json& j) {
  if (!j.is_object()) config_error("expected a JSON object");
  ClipPreprocessConfig c;
  c.do_resize = get_bool(j, "do_resize", c.do_resize);
  c.do_center_crop = get_bool(j, "do_center_crop", c.do_center_crop);
  c.do_rescale = get_bool(j, "do_rescale", c.do_rescale);
  c.do_normalize = get_bool(j, "do_normalize", c.do_normalize);
  if (j.contains("size") && !j["size"].is_null()) {
    const nlohmann::json& s = j["size"];
    if (s.is_number()) {  // old configs: a bare int means the shortest edge
      c.shortest_edge = positive_int(s, "size");
    } else if (s.is_object() && s.contains("shortest_edge")) {
      c.shortest_edge = positive_int(s["shortest_edge"], "size.shortest_edge");
    } else if (s.is_object() && s.contains("height") && s.contains("width")) {
      c.shortest_edge = 0;
      c.size_h = positive_int(s["height"], "size.height");
      c.size_w = positive_int(s["width"], "size.width");
    } else {
      config_error("\"size\" must have \"shortest_edge\" or \"height\" and \"width\"");
    }
  }
  if (j.contains("crop_size") && !j["crop_size"].is_null()) {
    const nlohmann::json& s = j["crop_size"];
    if (s.is_number()) {  // a bare int is a square crop
      c.crop_h = c.crop_w = positive_int(s, "crop_size");
    } else if (s.is_object() && s.contains("height") && s.contains("width")) {
      c.crop_h = positive_int(s["height"], "crop_size.height");
      c.crop_w = positive_int(s["width"], "crop_size.width");
    } else {
      config_error("\"crop_size\" must have \"height\" and \"width\"");
    }
  }
  if (j.contains("resample") && !j["resample"].is_null()) {
    if (!j["resample"].is_number_integer() || j["resample"].get<int64_t>() != 3)
      config_error("only bicubic resampling (\"resample\": 3) is supported, got " + j["resample"].dump());
  }
  if (j.contains("rescale_factor") && !j["rescale_factor"].is_null()) {
    if (!j["rescale_factor"].is_number()) config_error("\"rescale_factor\" must be a number");
    c.rescale_factor = j["rescale_factor"].get<double>();
  }
  get_triple(j, "image_mean", c.mean);
  get_triple(j, "image_std", c.std);
  for (float s : c.std)
    if (!(s != 0.0f)) config_error("\"image_std\" must not be zero");
  return c;
}

std::vector<float> clip_preprocess(const Image& input, const ClipPreprocessConfig& cfg, int* out_h, int* out_w) {
  Image img = to_rgb(input);
  if (img.empty()) throw ShapeError("clip_preprocess: empty image");
  if (cfg.do_resize) {
    const std::pair<int, int> wh = cfg.shortest_edge > 0
                                       ? shortest_edge_size(img.width, img.height, cfg.shortest_edge)
                                       : std::make_pair(cfg.size_w, cfg.size_h);
    if (wh.first <= 0 || wh.second <= 0) throw ConfigError("clip_preprocess: invalid resize target");
    if (cfg.do_center_crop && cfg.crop_w > 0 && cfg.crop_h > 0) {
      // Resize then crop, computing only the pixels the crop keeps: the same values, and a
      // very elongated image (whose resized long side can reach millions) stays cheap.
      const Span sx = crop_span(wh.first, cfg.crop_w), sy = crop_span(wh.second, cfg.crop_h);
      const Image part = resize_window(img, wh.first, wh.second, sx.src, sy.src, sx.len, sy.len);
      img = Image(cfg.crop_w, cfg.crop_h, 3);
      paste(part, sx.dst, sy.dst, &img);
    } else {
      img = resize_bicubic(img, wh.first, wh.second);
    }
  } else if (cfg.do_center_crop) {
    img = center_crop(img, cfg.crop_w, cfg.crop_h);
  }

  // numpy: uint8 * python float -> float64, cast to float32; then (x - mean) / std in
  // float32 with float32 mean/std. Kept in that order so results match to the last bit.
  const size_t plane = static_cast<size_t>(img.width) * img.height;
  std::vector<float> out(3 * plane);
  for (size_t i = 0; i < plane; ++i) {
    for (int c = 0; c < 3; ++c) {
      const uint8_t v = img.pixels[i * 3 + c];
      float x = cfg.do_rescale ? static_cast<float>(v * cfg.rescale_factor) : static_cast<float>(v);
      if (cfg.do_normalize) x = (x - cfg.mean[c]) / cfg.std[c];
      out[c * plane + i] = x;
    }
  }
  if (out_h) *out_h = img.height;
  if (out_w) *out_w = img.width;
  return out;
}

}  // namespace iris
