#pragma once
// Chat templates for single-turn visual question answering, and the tokenization LLaVA was
// trained with (the original `tokenizer_image_token`): the rendered prompt is split at the
// image placeholder, each piece is encoded with SentencePiece on its own (default options,
// dummy prefix included), and the pieces are joined by the image token id, after one BOS.
//
// A template is plain text with "{question}" where the user's question goes and the image
// placeholder ("<image>") where the image goes; LLaVA-1.5's is "USER: <image>\n{question} ASSISTANT:".
#include <cstdint>
#include <string>
#include <vector>

#include "core/sentencepiece.h"

namespace iris {

struct ChatTemplate {
  std::string format = "USER: <image>\n{question} ASSISTANT:";
  std::string image_placeholder = "<image>";

  static ChatTemplate llava15() { return {}; }
  // ConfigError unless `format` holds "{question}" exactly once.
  static ChatTemplate parse(const std::string& format, const std::string& image_placeholder = "<image>");
  // The prompt for `question` (trimmed). ConfigError for an empty or whitespace-only question.
  std::string render(const std::string& question) const;
  // How many image placeholders a rendered prompt holds.
  int64_t image_count() const;
};

// [bos] + encode(piece_0) + [image_token] + encode(piece_1) + ... for the pieces of `prompt`
// between occurrences of `image_placeholder`. bos_id < 0: no BOS.
std::vector<int64_t> tokenize_with_images(const SentencePieceTokenizer& tokenizer, const std::string& prompt,
                                          const std::string& image_placeholder, int64_t image_token_id,
                                          int64_t bos_id);

}  // namespace iris
