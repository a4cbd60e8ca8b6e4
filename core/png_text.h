#pragma once
// PNG chunk structure and text metadata (tEXt, zTXt, iTXt).
//
// A PNG file is an 8-byte signature followed by chunks: 4-byte big-endian length, 4-byte type,
// `length` data bytes, 4-byte CRC32 over type + data. IHDR comes first and IEND last.
// Text chunks hold key/value pairs (generation parameters, workflows). Keys and values are
// returned and accepted as UTF-8; tEXt/zTXt store Latin-1 and are converted.
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace iris {

// Ordered (key, value) pairs, UTF-8. Keys may repeat, as in the file.
using PngText = std::vector<std::pair<std::string, std::string>>;

// True when `bytes` start with the 8-byte PNG signature.
bool is_png_signature(const uint8_t* bytes, size_t n);

// One chunk of a PNG held in memory; pointers into the caller's buffer.
struct PngChunk {
  const uint8_t* start = nullptr;  // the length field; the chunk spans 12 + length bytes
  uint32_t length = 0;
  std::string type;  // four ASCII letters
  const uint8_t* data() const { return start + 8; }
  // Recomputes the CRC over type + data and compares it with the stored one.
  bool crc_ok() const;
  // Critical chunks (IHDR, PLTE, IDAT, IEND) have an upper-case first letter.
  bool critical() const { return !type.empty() && type[0] >= 'A' && type[0] <= 'Z'; }
};

// Splits a PNG file into its chunks, up to and including IEND (bytes after IEND are ignored).
// Checks the structure only: signature, IHDR first with 13 bytes, every chunk complete
// (this is what catches truncated files), IEND present. CRCs are not checked here.
// Throws FormatError "<what>: not a PNG file (...)" or "<what>: corrupt or truncated PNG (...)".
std::vector<PngChunk> png_chunks(const uint8_t* bytes, size_t n, const std::string& what);

// CRC32 of a chunk's type followed by its data (what the chunk's CRC field holds).
uint32_t png_chunk_crc(const char* type4, const uint8_t* data, size_t n);

// Text metadata of a PNG file, in file order. tEXt, zTXt and iTXt (compressed or not) are
// read; each text chunk's CRC and fields are validated. Throws IoError (cannot read) or
// FormatError naming the file.
PngText read_png_text(const std::string& path);
PngText read_png_text(const uint8_t* bytes, size_t n, const std::string& what);

// Returns a copy of the PNG `png` with one text chunk per pair inserted right after IHDR:
// tEXt when key and value are representable in Latin-1 (as Pillow decides), else iTXt
// (uncompressed, UTF-8). Keys must be 1-79 Latin-1 characters; values must be valid UTF-8
// without NUL bytes. Throws FormatError naming `what` and the key otherwise.
std::vector<uint8_t> png_add_text(const uint8_t* png, size_t n, const PngText& text, const std::string& what);

}  // namespace iris
