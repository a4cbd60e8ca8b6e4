// libFuzzer target: the CLIP tokenizer's text path (HTML unescape, lower-casing, the
// Unicode splitter, BPE) on arbitrary bytes, with the real vocabulary.
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>

#include "core/clip_tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static std::unique_ptr<iris::ClipTokenizer> tok = [] {
    const char* path = std::getenv("IRIS_CLIP_BPE");
    return std::make_unique<iris::ClipTokenizer>(
        iris::ClipTokenizer::from_bpe_gz(path ? path : "../shared/fixtures/data/bpe_simple_vocab_16e6.txt.gz"));
  }();
  std::vector<int> ids = tok->encode(std::string(reinterpret_cast<const char*>(data), size));
  (void)tok->decode(ids);
  return 0;
}
