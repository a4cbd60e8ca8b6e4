#pragma once
// Unicode text helpers that reproduce Python 3.11 string semantics (Unicode 14.0), as
// needed by tokenizers whose reference implementation is Python code.
//
// Character properties come from utf8proc; code points that the installed utf8proc
// assigns but Unicode 14.0 does not (Unicode 15.0/15.1 additions) are treated as
// unassigned, so results follow Unicode 14.0 as long as utf8proc is at least 14.0.
#include <string>
#include <string_view>

namespace iris::unicode {

constexpr char32_t kReplacementChar = 0xFFFD;

// Decodes UTF-8 the way Python's bytes.decode("utf-8", errors="replace") does: every
// maximal ill-formed subsequence (stray continuation byte, truncated sequence, overlong
// form, surrogate, > U+10FFFF) becomes one U+FFFD. Never fails.
std::u32string decode_utf8(std::string_view utf8);

// Appends the UTF-8 form of `cp`; surrogates and values > U+10FFFF become U+FFFD.
void append_utf8(std::string& out, char32_t cp);
std::string encode_utf8(std::u32string_view text);

// General category tests (Unicode 14.0): \p{L} (Lu Ll Lt Lm Lo) and \p{N} (Nd Nl No).
bool is_letter(char32_t cp);
bool is_number(char32_t cp);
// Python str.isspace(): bidi class WS/B/S or category Zs (includes U+001C..U+001F).
bool is_python_space(char32_t cp);
// The Unicode White_Space property: what `\s` means in the Python `regex` module.
bool is_white_space(char32_t cp);

// Python str.lower(): full lowercase mapping (U+0130 -> "i\u0307") and the final-sigma
// rule for U+03A3 (-> U+03C2 at the end of a word, U+03C3 elsewhere).
std::u32string to_lower(std::u32string_view text);

// Python str.strip() with no argument: removes leading/trailing is_python_space().
std::u32string_view strip(std::u32string_view text);

// Python html.unescape(): named references (HTML5 table; the legacy ones also without
// ';', longest prefix first), decimal/hex numeric references with the HTML5 replacement
// table for invalid numbers. One difference: Python 3.11 raises ValueError for decimal
// references longer than 4300 digits; here they are simply out of range (U+FFFD).
std::u32string html_unescape(std::u32string_view text);

}  // namespace iris::unicode
