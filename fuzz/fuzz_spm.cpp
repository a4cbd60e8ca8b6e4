// libFuzzer target: SentencePiece model files are untrusted input. Any byte string must
// load or fail with FormatError; a loaded model must encode and decode without crashing.
#include <cstdint>
#include <string>

#include "core/error.h"
#include "core/sentencepiece.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    auto tok = iris::SentencePieceTokenizer::from_bytes(std::string(reinterpret_cast<const char*>(data), size), "fuzz");
    for (const char* text : {"Hello world", "  two  spaces ", "\xef\xbc\xa1\xe2\x85\xa0 caf\xc3\xa9 \xf0\x9f\x98\x80", "\xff\xfe bad"}) {
      std::vector<int> ids = tok.encode(text);
      (void)tok.decode(ids);
    }
  } catch (const iris::FormatError&) {
  }
  return 0;
}
