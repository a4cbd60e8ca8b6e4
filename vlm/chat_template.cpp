#include "vlm/chat_template.h"

#include "core/error.h"

namespace iris {

namespace {

const char kQuestion[] = "{question}";

size_t count_of(const std::string& s, const std::string& what) {
  if (what.empty()) return 0;
  size_t n = 0;
  for (size_t pos = s.find(what); pos != std::string::npos; pos = s.find(what, pos + what.size())) ++n;
  return n;
}

std::string trim(const std::string& s) {
  const char* ws = " \t\r\n\v\f";
  const size_t a = s.find_first_not_of(ws);
  if (a == std::string::npos) return "";
  return s.substr(a, s.find_last_not_of(ws) - a + 1);
}

}  // namespace

ChatTemplate ChatTemplate::parse(const std::string& format, const std::string& image_placeholder) {
  if (count_of(format, kQuestion) != 1)
    throw ConfigError("chat template \"" + format + "\": must contain {question} exactly once");
  if (image_placeholder.empty()) throw ConfigError("chat template: the image placeholder must not be empty");
  ChatTemplate t;
  t.format = format;
  t.image_placeholder = image_placeholder;
  return t;
}

std::string ChatTemplate::render(const std::string& question) const {
  const std::string q = trim(question);
  if (q.empty()) throw ConfigError("the question is empty");
  std::string out = format;
  const size_t pos = out.find(kQuestion);
  if (pos == std::string::npos) throw ConfigError("chat template \"" + format + "\": no {question} in it");
  out.replace(pos, sizeof(kQuestion) - 1, q);
  return out;
}

int64_t ChatTemplate::image_count() const { return static_cast<int64_t>(count_of(format, image_placeholder)); }

std::vector<int64_t> tokenize_with_images(const SentencePieceTokenizer& tokenizer, const std::string& prompt,
                                          const std::string& image_placeholder, int64_t image_token_id,
                                          int64_t bos_id) {
  if (image_placeholder.empty()) throw ConfigError("tokenize_with_images: empty image placeholder");
  std::vector<int64_t> ids;
  if (bos_id >= 0) ids.push_back(bos_id);
  size_t start = 0;
  while (true) {
    const size_t at = prompt.find(image_placeholder, start);
    const std::string piece = prompt.substr(start, at == std::string::npos ? std::string::npos : at - start);
    if (!piece.empty())
      for (int id : tokenizer.encode(piece)) ids.push_back(id);
    if (at == std::string::npos) break;
    ids.push_back(image_token_id);
    start = at + image_placeholder.size();
  }
  return ids;
}

}  // namespace iris
