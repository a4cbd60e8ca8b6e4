#include "core/unicode.h"

#include <utf8proc.h>

#include <algorithm>
#include <cstdint>
#include <iterator>

namespace iris::unicode {
namespace {

struct HtmlEntity {
  const char* name;
  const char* value;  // UTF-8
};
struct InvalidCharref {
  char32_t number;
  char32_t replacement;
};
#include "core/html_entities.inc"

struct Range {
  char32_t first, last;
};

// Code points assigned in Unicode 15.0 (utf8proc 2.8) or 15.1 (utf8proc 2.9) but not in
// Unicode 14.0, the version of the golden reference (Python 3.11 unicodedata and the
// `regex` module it used). Treated as unassigned (Cn). Computed by comparing utf8proc
// 2.8's categories with Python 3.11's unicodedata for every code point, plus the 15.1
// additions. Sorted.
constexpr Range kNewerThanUnicode14[] = {
    {0xCF3, 0xCF3},       {0xECE, 0xECE},       {0x2FFC, 0x2FFF},     {0x31EF, 0x31EF},
    {0x10EFD, 0x10EFF},   {0x1123F, 0x11241},   {0x11B00, 0x11B09},   {0x11F00, 0x11F10},
    {0x11F12, 0x11F3A},   {0x11F3E, 0x11F59},   {0x1342F, 0x1342F},   {0x13439, 0x13455},
    {0x1B132, 0x1B132},   {0x1B155, 0x1B155},   {0x1D2C0, 0x1D2D3},   {0x1DF25, 0x1DF2A},
    {0x1E030, 0x1E06D},   {0x1E08F, 0x1E08F},   {0x1E4D0, 0x1E4F9},   {0x1F6DC, 0x1F6DC},
    {0x1F774, 0x1F776},   {0x1F77B, 0x1F77F},   {0x1F7D9, 0x1F7D9},   {0x1FA75, 0x1FA77},
    {0x1FA87, 0x1FA88},   {0x1FAAD, 0x1FAAF},   {0x1FABB, 0x1FABD},   {0x1FABF, 0x1FABF},
    {0x1FACE, 0x1FACF},   {0x1FADA, 0x1FADB},   {0x1FAE8, 0x1FAE8},   {0x1FAF7, 0x1FAF8},
    {0x2B739, 0x2B739},   {0x2EBF0, 0x2EE5D},   {0x31350, 0x323AF},
};

// Word_Break MidLetter / MidNumLet / Single_Quote: case-ignorable although their
// category (Po) is not. Sorted.
constexpr char32_t kCaseIgnorablePunct[] = {
    0x27,   0x2E,   0x3A,   0xB7,   0x387,  0x55F,  0x5F4,  0x2018, 0x2019,
    0x2024, 0x2027, 0xFE13, 0xFE52, 0xFE55, 0xFF07, 0xFF0E, 0xFF1A,
};

// Cased (Other_Lowercase / Other_Uppercase) although neither Lu, Ll, Lt nor
// case-ignorable: ª º, Roman numerals, circled and squared Latin letters. Sorted.
constexpr Range kExtraCased[] = {
    {0xAA, 0xAA},       {0xBA, 0xBA},       {0x2160, 0x217F},   {0x24B6, 0x24E9},
    {0x1F130, 0x1F149}, {0x1F150, 0x1F169}, {0x1F170, 0x1F189},
};

template <size_t N>
bool in_ranges(const Range (&ranges)[N], char32_t cp) {
  auto it = std::upper_bound(std::begin(ranges), std::end(ranges), cp,
                             [](char32_t c, const Range& r) { return c < r.first; });
  return it != std::begin(ranges) && cp <= std::prev(it)->last;
}

bool newer_than_unicode14(char32_t cp) {
  return cp >= 0xCF3 && in_ranges(kNewerThanUnicode14, cp);
}

utf8proc_category_t category(char32_t cp) {
  if (cp > 0x10FFFF || newer_than_unicode14(cp)) return UTF8PROC_CATEGORY_CN;
  return utf8proc_category(static_cast<utf8proc_int32_t>(cp));
}

char32_t simple_lower(char32_t cp) {
  if (cp > 0x10FFFF || newer_than_unicode14(cp)) return cp;
  return static_cast<char32_t>(utf8proc_tolower(static_cast<utf8proc_int32_t>(cp)));
}

// Case_Ignorable (Unicode DerivedCoreProperties), as Python's lower() uses it.
bool is_case_ignorable(char32_t cp) {
  switch (category(cp)) {
    case UTF8PROC_CATEGORY_MN:
    case UTF8PROC_CATEGORY_ME:
    case UTF8PROC_CATEGORY_CF:
    case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_SK:
      return true;
    default:
      return std::binary_search(std::begin(kCaseIgnorablePunct), std::end(kCaseIgnorablePunct), cp);
  }
}

// Cased, only meaningful for characters that are not case-ignorable (the final-sigma
// scan skips those before it tests this).
bool is_cased(char32_t cp) {
  switch (category(cp)) {
    case UTF8PROC_CATEGORY_LU:
    case UTF8PROC_CATEGORY_LL:
    case UTF8PROC_CATEGORY_LT:
      return true;
    default:
      return in_ranges(kExtraCased, cp);
  }
}

// CPython's handle_capital_sigma(): U+03A3 at index i lowers to final sigma when
// preceded by a cased letter and not followed by one, skipping case-ignorables.
bool is_final_sigma(std::u32string_view text, size_t i) {
  size_t j = i;
  char32_t c = 0;
  bool found = false;
  while (j > 0) {
    c = text[--j];
    if (!is_case_ignorable(c)) {
      found = true;
      break;
    }
  }
  if (!found || !is_cased(c)) return false;
  for (j = i + 1; j < text.size(); ++j) {
    if (!is_case_ignorable(text[j])) return !is_cased(text[j]);
  }
  return true;
}

bool is_ascii_digit(char32_t c) { return c >= '0' && c <= '9'; }
bool is_ascii_hex(char32_t c) {
  return is_ascii_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}
int hex_value(char32_t c) {
  if (is_ascii_digit(c)) return static_cast<int>(c - '0');
  if (c >= 'a' && c <= 'f') return static_cast<int>(c - 'a' + 10);
  return static_cast<int>(c - 'A' + 10);
}

// The characters of the named-reference alternative `[^\t\n\f <&#;]`.
bool is_entity_name_char(char32_t c) {
  return c != '\t' && c != '\n' && c != '\f' && c != ' ' && c != '<' && c != '&' && c != '#' &&
         c != ';';
}

const HtmlEntity* find_entity(std::u32string_view name) {
  std::string key;
  for (char32_t c : name) {
    if (c >= 0x80) return nullptr;  // every HTML5 name is ASCII
    key.push_back(static_cast<char>(c));
  }
  auto it = std::lower_bound(std::begin(kHtmlEntities), std::end(kHtmlEntities), key,
                             [](const HtmlEntity& e, const std::string& k) { return k.compare(e.name) > 0; });
  if (it == std::end(kHtmlEntities) || key != it->name) return nullptr;
  return &*it;
}

// Python html._replace_charref for a numeric reference whose value is `num` (clamped to
// 0x110000 when larger).
void append_numeric_charref(std::u32string& out, uint32_t num) {
  auto fixed = std::lower_bound(std::begin(kInvalidCharrefs), std::end(kInvalidCharrefs), num,
                                [](const InvalidCharref& r, uint32_t n) { return r.number < n; });
  if (fixed != std::end(kInvalidCharrefs) && fixed->number == num) {
    out.push_back(fixed->replacement);
  } else if ((num >= 0xD800 && num <= 0xDFFF) || num > 0x10FFFF) {
    out.push_back(kReplacementChar);
  } else if (!std::binary_search(std::begin(kInvalidCodepoints), std::end(kInvalidCodepoints),
                                 static_cast<char32_t>(num))) {
    out.push_back(static_cast<char32_t>(num));
  }  // else: an invalid code point is dropped
}

// Python html._replace_charref for a named reference `name` (without '&', with ';'
// when the match had one).
void append_named_charref(std::u32string& out, std::u32string_view name) {
  if (const HtmlEntity* e = find_entity(name)) {
    out += decode_utf8(e->value);
    return;
  }
  // The longest matching prefix of at least 2 characters (legacy names without ';').
  for (size_t len = name.size() - 1; len >= 2 && len < name.size(); --len) {
    if (const HtmlEntity* e = find_entity(name.substr(0, len))) {
      out += decode_utf8(e->value);
      out.append(name.substr(len));
      return;
    }
  }
  out.push_back('&');
  out.append(name);
}

// Parses ASCII digits in `base`, saturating at 0x110000: every value above U+10FFFF
// is handled the same way.
uint32_t parse_clamped(std::u32string_view digits, int base) {
  uint32_t v = 0;
  for (char32_t c : digits) {
    v = v * base + (base == 16 ? hex_value(c) : static_cast<int>(c - '0'));
    if (v > 0x10FFFF) return 0x110000;
  }
  return v;
}

}  // namespace

std::u32string decode_utf8(std::string_view s) {
  std::u32string out;
  out.reserve(s.size());
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    const unsigned char b0 = p[i];
    if (b0 < 0x80) {
      out.push_back(b0);
      ++i;
      continue;
    }
    // Sequence length and the allowed range of the second byte (Unicode Table 3-7).
    int len = 0;
    unsigned char lo = 0x80, hi = 0xBF;
    if (b0 >= 0xC2 && b0 <= 0xDF) {
      len = 2;
    } else if (b0 >= 0xE0 && b0 <= 0xEF) {
      len = 3;
      if (b0 == 0xE0) lo = 0xA0;
      if (b0 == 0xED) hi = 0x9F;  // no surrogates
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
      len = 4;
      if (b0 == 0xF0) lo = 0x90;
      if (b0 == 0xF4) hi = 0x8F;  // <= U+10FFFF
    } else {
      out.push_back(kReplacementChar);  // 0x80..0xC1, 0xF5..0xFF never start a sequence
      ++i;
      continue;
    }
    char32_t cp = b0 & (0xFF >> (len + 1));
    int k = 1;
    for (; k < len && i + k < n; ++k) {
      const unsigned char b = p[i + k];
      const bool ok = (k == 1) ? (b >= lo && b <= hi) : (b >= 0x80 && b <= 0xBF);
      if (!ok) break;
      cp = (cp << 6) | (b & 0x3F);
    }
    if (k == len) {
      out.push_back(cp);
    } else {
      out.push_back(kReplacementChar);  // the maximal valid prefix counts as one error
    }
    i += k;
  }
  return out;
}

void append_utf8(std::string& out, char32_t cp) {
  if ((cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF) cp = kReplacementChar;
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

std::string encode_utf8(std::u32string_view text) {
  std::string out;
  out.reserve(text.size());
  for (char32_t c : text) append_utf8(out, c);
  return out;
}

bool is_letter(char32_t cp) {
  switch (category(cp)) {
    case UTF8PROC_CATEGORY_LU:
    case UTF8PROC_CATEGORY_LL:
    case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_LO:
      return true;
    default:
      return false;
  }
}

bool is_number(char32_t cp) {
  switch (category(cp)) {
    case UTF8PROC_CATEGORY_ND:
    case UTF8PROC_CATEGORY_NL:
    case UTF8PROC_CATEGORY_NO:
      return true;
    default:
      return false;
  }
}

bool is_white_space(char32_t cp) {
  switch (cp) {
    case 0x09: case 0x0A: case 0x0B: case 0x0C: case 0x0D: case 0x20: case 0x85: case 0xA0:
    case 0x1680: case 0x2028: case 0x2029: case 0x202F: case 0x205F: case 0x3000:
      return true;
    default:
      return cp >= 0x2000 && cp <= 0x200A;
  }
}

bool is_python_space(char32_t cp) {
  // The information separators U+001C..U+001F have bidi class B/S, so Python counts them.
  return is_white_space(cp) || (cp >= 0x1C && cp <= 0x1F);
}

std::u32string to_lower(std::u32string_view text) {
  std::u32string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    const char32_t c = text[i];
    if (c == 0x3A3) {
      out.push_back(is_final_sigma(text, i) ? 0x3C2 : 0x3C3);
    } else if (c == 0x130) {
      // The only unconditional multi-character lowercase mapping (SpecialCasing.txt).
      out.push_back('i');
      out.push_back(0x307);
    } else {
      out.push_back(simple_lower(c));
    }
  }
  return out;
}

std::u32string_view strip(std::u32string_view text) {
  size_t b = 0, e = text.size();
  while (b < e && is_python_space(text[b])) ++b;
  while (e > b && is_python_space(text[e - 1])) --e;
  return text.substr(b, e - b);
}

// Mirrors html._charref = r'&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?)'
// applied with re.sub, left to right, without overlaps.
std::u32string html_unescape(std::u32string_view s) {
  if (s.find(U'&') == std::u32string_view::npos) return std::u32string(s);
  std::u32string out;
  out.reserve(s.size());
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    if (s[i] != '&') {
      out.push_back(s[i++]);
      continue;
    }
    const size_t j = i + 1;  // first character after '&'
    if (j < n && s[j] == '#') {
      size_t k = j + 1;
      int base = 10;
      if (k < n && is_ascii_digit(s[k])) {
        while (k < n && is_ascii_digit(s[k])) ++k;
      } else if (k + 1 < n && (s[k] == 'x' || s[k] == 'X') && is_ascii_hex(s[k + 1])) {
        base = 16;
        ++k;
        while (k < n && is_ascii_hex(s[k])) ++k;
      } else {
        out.push_back('&');  // "&#" without digits: no alternative matches ('#' excluded)
        ++i;
        continue;
      }
      const size_t digits_begin = (base == 16) ? j + 2 : j + 1;
      append_numeric_charref(out, parse_clamped(s.substr(digits_begin, k - digits_begin), base));
      if (k < n && s[k] == ';') ++k;
      i = k;
      continue;
    }
    size_t k = j;
    while (k < n && k - j < 32 && is_entity_name_char(s[k])) ++k;
    if (k == j) {
      out.push_back('&');
      ++i;
      continue;
    }
    if (k < n && s[k] == ';') ++k;
    append_named_charref(out, s.substr(j, k - j));
    i = k;
  }
  return out;
}

}  // namespace iris::unicode
