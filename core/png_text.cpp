#include "core/png_text.h"

#include <zlib.h>

#include <algorithm>
#include <cstring>

#include "core/error.h"
#include "core/mmap_file.h"

namespace iris {
namespace {

const uint8_t kSignature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
// The PNG spec bounds chunk lengths to 2^31 - 1.
constexpr uint32_t kMaxChunkLength = 0x7fffffffu;
constexpr size_t kMaxKeyword = 79;
// Decompressed text limits (zip-bomb guard). Real metadata (prompts, node workflows) is at
// most a few MB.
constexpr size_t kMaxTextChunk = 16u << 20;
constexpr size_t kMaxTextTotal = 64u << 20;

uint32_t be32(const uint8_t* p) {
  return (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | uint32_t(p[3]);
}

void put_be32(std::vector<uint8_t>& out, uint32_t v) {
  out.push_back(uint8_t(v >> 24));
  out.push_back(uint8_t(v >> 16));
  out.push_back(uint8_t(v >> 8));
  out.push_back(uint8_t(v));
}

bool ascii_letter(uint8_t c) { return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z'); }

// Chunk types are four ASCII letters; anything else is shown as '?'.
std::string printable_type(const uint8_t* p) {
  std::string s;
  for (int i = 0; i < 4; ++i) s += ascii_letter(p[i]) ? static_cast<char>(p[i]) : '?';
  return s;
}

[[noreturn]] void corrupt(const std::string& what, const std::string& why) {
  throw FormatError(join_context(what, "corrupt or truncated PNG (" + why + ")"));
}

// ---- UTF-8 / Latin-1 ----

// Decodes one code point at s[i], advancing i. False on malformed UTF-8 (bad lead or
// continuation byte, overlong form, surrogate, beyond U+10FFFF, cut short).
bool next_code_point(const std::string& s, size_t& i, uint32_t& cp) {
  const auto byte = [&](size_t k) { return static_cast<uint8_t>(s[k]); };
  uint8_t b = byte(i);
  int extra;
  uint32_t min;
  if (b < 0x80) {
    cp = b;
    ++i;
    return true;
  } else if ((b & 0xe0) == 0xc0) {
    extra = 1, cp = b & 0x1f, min = 0x80;
  } else if ((b & 0xf0) == 0xe0) {
    extra = 2, cp = b & 0x0f, min = 0x800;
  } else if ((b & 0xf8) == 0xf0) {
    extra = 3, cp = b & 0x07, min = 0x10000;
  } else {
    return false;
  }
  if (s.size() - i <= static_cast<size_t>(extra)) return false;  // cut short
  for (int k = 1; k <= extra; ++k) {
    uint8_t c = byte(i + k);
    if ((c & 0xc0) != 0x80) return false;
    cp = (cp << 6) | (c & 0x3f);
  }
  if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
  i += 1 + extra;
  return true;
}

bool valid_utf8(const std::string& s) {
  uint32_t cp;
  for (size_t i = 0; i < s.size();)
    if (!next_code_point(s, i, cp)) return false;
  return true;
}

// UTF-8 -> Latin-1; false when `s` is not valid UTF-8 or has a code point above U+00FF.
bool utf8_to_latin1(const std::string& s, std::string* out) {
  out->clear();
  uint32_t cp;
  for (size_t i = 0; i < s.size();) {
    if (!next_code_point(s, i, cp) || cp > 0xff) return false;
    out->push_back(static_cast<char>(cp));
  }
  return true;
}

std::string latin1_to_utf8(const uint8_t* p, size_t n) {
  std::string out;
  out.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    if (p[i] < 0x80) {
      out.push_back(static_cast<char>(p[i]));
    } else {
      out.push_back(static_cast<char>(0xc0 | (p[i] >> 6)));
      out.push_back(static_cast<char>(0x80 | (p[i] & 0x3f)));
    }
  }
  return out;
}

// ---- reading text chunks ----

// Inflates one zlib stream that must end exactly at the end of the input.
std::string inflate_text(const uint8_t* p, size_t n, size_t limit, const std::string& where) {
  z_stream zs{};
  if (inflateInit(&zs) != Z_OK) throw Error(where + ": zlib init failed");
  zs.next_in = const_cast<Bytef*>(p);
  zs.avail_in = static_cast<uInt>(n);
  std::string out;
  char buf[16384];
  int rc = Z_OK;
  while (rc == Z_OK) {
    zs.next_out = reinterpret_cast<Bytef*>(buf);
    zs.avail_out = sizeof buf;
    rc = inflate(&zs, Z_NO_FLUSH);
    out.append(buf, sizeof buf - zs.avail_out);
    if (out.size() > limit) {
      inflateEnd(&zs);
      throw FormatError(where + ": decompressed text larger than " + std::to_string(limit >> 20) + " MiB");
    }
  }
  // Z_BUF_ERROR here means the input ended before the stream did; trailing bytes after the
  // stream are not accepted either.
  const bool complete = rc == Z_STREAM_END && zs.avail_in == 0;
  inflateEnd(&zs);
  if (!complete) throw FormatError(where + ": bad or truncated zlib data");
  return out;
}

// Splits off a NUL-terminated field starting at p[*pos]; throws when there is no NUL.
std::string take_field(const uint8_t* p, size_t n, size_t* pos, const std::string& where, const char* field) {
  const void* z = std::memchr(p + *pos, 0, n - *pos);
  if (!z) throw FormatError(where + ": missing NUL after the " + field);
  size_t end = static_cast<const uint8_t*>(z) - p;
  std::string s(reinterpret_cast<const char*>(p + *pos), end - *pos);
  *pos = end + 1;
  return s;
}

std::string read_keyword(const uint8_t* p, size_t n, size_t* pos, const std::string& where) {
  std::string raw = take_field(p, n, pos, where, "keyword");
  if (raw.empty() || raw.size() > kMaxKeyword)
    throw FormatError(where + ": keyword length " + std::to_string(raw.size()) + " (must be 1-79)");
  return latin1_to_utf8(reinterpret_cast<const uint8_t*>(raw.data()), raw.size());
}

void check_compression_method(uint8_t method, const std::string& where) {
  if (method != 0) throw FormatError(where + ": unknown compression method " + std::to_string(method));
}

// Decodes one text chunk into (key, value); `budget` is the decompressed bytes still allowed.
std::pair<std::string, std::string> decode_text_chunk(const PngChunk& c, const std::string& where, size_t* budget) {
  const uint8_t* p = c.data();
  const size_t n = c.length;
  size_t pos = 0;
  std::string key = read_keyword(p, n, &pos, where);
  const auto inflate_limited = [&](size_t at) {
    std::string s = inflate_text(p + at, n - at, std::min(kMaxTextChunk, *budget), where);
    *budget -= s.size();
    return s;
  };
  if (c.type == "tEXt") return {key, latin1_to_utf8(p + pos, n - pos)};
  if (c.type == "zTXt") {
    if (pos >= n) throw FormatError(where + ": missing compression method");
    check_compression_method(p[pos], where);
    std::string latin1 = inflate_limited(pos + 1);
    return {key, latin1_to_utf8(reinterpret_cast<const uint8_t*>(latin1.data()), latin1.size())};
  }
  // iTXt: compression flag, method, language tag\0, translated keyword\0, UTF-8 text.
  if (pos + 2 > n) throw FormatError(where + ": missing compression flag");
  const uint8_t flag = p[pos], method = p[pos + 1];
  pos += 2;
  if (flag > 1) throw FormatError(where + ": bad compression flag " + std::to_string(flag));
  if (flag == 1) check_compression_method(method, where);
  take_field(p, n, &pos, where, "language tag");
  std::string translated = take_field(p, n, &pos, where, "translated keyword");
  if (!valid_utf8(translated)) throw FormatError(where + ": translated keyword is not valid UTF-8");
  std::string value = flag ? inflate_limited(pos) : std::string(reinterpret_cast<const char*>(p + pos), n - pos);
  if (!valid_utf8(value)) throw FormatError(where + ": text is not valid UTF-8");
  return {key, value};
}

// ---- writing text chunks ----

void append_chunk(std::vector<uint8_t>& out, const char* type, const std::string& data) {
  put_be32(out, static_cast<uint32_t>(data.size()));
  out.insert(out.end(), type, type + 4);
  out.insert(out.end(), data.begin(), data.end());
  put_be32(out, png_chunk_crc(type, reinterpret_cast<const uint8_t*>(data.data()), data.size()));
}

void append_text_chunk(std::vector<uint8_t>& out, const std::string& key, const std::string& value,
                       const std::string& what) {
  const std::string where = join_context(what, "PNG text key \"" + key + "\"");
  std::string key_latin1, value_latin1;
  if (!utf8_to_latin1(key, &key_latin1) || key_latin1.empty() || key_latin1.size() > kMaxKeyword ||
      key_latin1.find('\0') != std::string::npos)
    throw FormatError(where + ": keys must be 1-79 Latin-1 characters without NUL");
  if (!valid_utf8(value)) throw FormatError(where + ": value is not valid UTF-8");
  if (value.find('\0') != std::string::npos) throw FormatError(where + ": value contains a NUL byte");
  if (value.size() > kMaxChunkLength - kMaxKeyword - 5) throw FormatError(where + ": value too long");

  std::string data = key_latin1;
  data.push_back('\0');
  if (utf8_to_latin1(value, &value_latin1)) {
    data += value_latin1;
    append_chunk(out, "tEXt", data);
  } else {
    // Not compressed, method 0, empty language tag, empty translated keyword.
    data.append("\0\0\0\0", 4);
    data += value;
    append_chunk(out, "iTXt", data);
  }
}

}  // namespace

bool is_png_signature(const uint8_t* bytes, size_t n) {
  return n >= sizeof kSignature && std::memcmp(bytes, kSignature, sizeof kSignature) == 0;
}

uint32_t png_chunk_crc(const char* type4, const uint8_t* data, size_t n) {
  uLong crc = crc32(0L, reinterpret_cast<const Bytef*>(type4), 4);
  // zlib's crc32 takes uInt lengths; chunk data is < 2^31 so one call suffices.
  if (n > 0) crc = crc32(crc, data, static_cast<uInt>(n));
  return static_cast<uint32_t>(crc);
}

bool PngChunk::crc_ok() const {
  return png_chunk_crc(reinterpret_cast<const char*>(start + 4), data(), length) == be32(start + 8 + length);
}

std::vector<PngChunk> png_chunks(const uint8_t* bytes, size_t n, const std::string& what) {
  if (!is_png_signature(bytes, n)) throw FormatError(join_context(what, "not a PNG file (no PNG signature)"));
  std::vector<PngChunk> chunks;
  size_t pos = sizeof kSignature;
  for (;;) {
    if (pos == n) corrupt(what, "file ends before the IEND chunk");
    if (n - pos < 12) corrupt(what, "file ends inside a chunk header at offset " + std::to_string(pos));
    PngChunk c;
    c.start = bytes + pos;
    c.length = be32(c.start);
    c.type = printable_type(c.start + 4);
    if (c.type.find('?') != std::string::npos)
      corrupt(what, "invalid chunk type \"" + c.type + "\" at offset " + std::to_string(pos));
    if (c.length > kMaxChunkLength)
      corrupt(what, "chunk \"" + c.type + "\" at offset " + std::to_string(pos) + " has invalid length " +
                        std::to_string(c.length));
    if (c.length > n - pos - 12)
      corrupt(what, "file ends inside chunk \"" + c.type + "\" at offset " + std::to_string(pos));
    if (chunks.empty() && (c.type != "IHDR" || c.length != 13))
      corrupt(what, "first chunk must be a 13-byte IHDR, found \"" + c.type + "\" of " +
                        std::to_string(c.length) + " bytes");
    pos += 12 + static_cast<size_t>(c.length);
    chunks.push_back(c);
    if (c.type == "IEND") return chunks;
  }
}

PngText read_png_text(const uint8_t* bytes, size_t n, const std::string& what) {
  PngText out;
  size_t budget = kMaxTextTotal;
  for (const PngChunk& c : png_chunks(bytes, n, what)) {
    if (c.type != "tEXt" && c.type != "zTXt" && c.type != "iTXt") continue;
    const std::string where =
        join_context(what, c.type + " chunk at offset " + std::to_string(c.start - bytes));
#ifndef FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION  // let fuzzers reach the field parsing
    if (!c.crc_ok()) throw FormatError(where + ": CRC mismatch (corrupt file)");
#endif
    out.push_back(decode_text_chunk(c, where, &budget));
  }
  return out;
}

PngText read_png_text(const std::string& path) {
  MappedFile f(path);
  return read_png_text(f.data(), f.size(), path);
}

std::vector<uint8_t> png_add_text(const uint8_t* png, size_t n, const PngText& text, const std::string& what) {
  const std::vector<PngChunk> chunks = png_chunks(png, n, what);
  const size_t after_ihdr = sizeof kSignature + 12 + chunks[0].length;
  std::vector<uint8_t> out(png, png + after_ihdr);
  for (const auto& [key, value] : text) append_text_chunk(out, key, value, what);
  out.insert(out.end(), png + after_ihdr, png + n);
  return out;
}

}  // namespace iris
