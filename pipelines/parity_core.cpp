// Parity runners for what core implements: the tokenizer golden tables (and, when it lands,
// the CLIP image processor).
#include <fstream>
#include <string>

#include "core/clip_tokenizer.h"
#include "core/error.h"
#include "core/image.h"

#include <cstring>
#include "core/sentencepiece.h"
#include "pipelines/parity.h"

namespace iris {

namespace {

struct GoldenRow {
  std::string text;
  std::vector<int> ids;
  std::vector<std::string> pieces;
};

std::vector<GoldenRow> read_golden_rows(const std::string& path) {
  std::ifstream f(path);
  if (!f) throw IoError(path + ": cannot open");
  std::vector<GoldenRow> rows;
  std::string line;
  for (int n = 1; std::getline(f, line); ++n) {
    if (line.empty()) continue;
    Json j = parse_json(line, path + ":" + std::to_string(n));
    GoldenRow r;
    r.text = j.at("text").get<std::string>();
    r.ids = j.at("ids").get<std::vector<int>>();
    if (j.contains("pieces")) r.pieces = j["pieces"].get<std::vector<std::string>>();
    rows.push_back(std::move(r));
  }
  if (rows.empty()) throw FormatError(path + ": no rows");
  return rows;
}

std::string ids_string(const std::vector<int>& ids) {
  std::string s = "[";
  for (size_t i = 0; i < ids.size(); ++i) s += (i ? "," : "") + std::to_string(ids[i]);
  return s + "]";
}

// One line per tokenizer source: rows equal / rows, and the first mismatch if any.
template <typename Encode>
ParityLine check_rows(const std::string& name, const std::vector<GoldenRow>& rows, Encode encode) {
  ParityLine line;
  line.name = name;
  size_t equal = 0;
  std::string first_bad;
  for (size_t i = 0; i < rows.size(); ++i) {
    const std::string mismatch = encode(rows[i]);
    if (mismatch.empty()) ++equal;
    else if (first_bad.empty()) first_bad = "; first mismatch row " + std::to_string(i) + ": " + mismatch;
  }
  line.pass = equal == rows.size();
  line.max_abs = static_cast<double>(rows.size() - equal);
  line.detail = std::to_string(equal) + "/" + std::to_string(rows.size()) + " rows equal" + first_bad;
  return line;
}

void run_clip_tokenizer(const Fixture& fx, std::vector<ParityLine>& lines) {
  const auto rows = read_golden_rows(fx.path);
  auto check = [&](const std::string& name, const ClipTokenizer& tok) {
    lines.push_back(check_rows(name, rows, [&](const GoldenRow& r) {
      const std::vector<int> got = tok.encode_with_special(r.text);
      return got == r.ids ? std::string() : "got " + ids_string(got) + ", want " + ids_string(r.ids);
    }));
  };
  check("clip_bpe[vocab.json+merges.txt]",
        ClipTokenizer::from_files(fx.dir() + "/data/clip_tokenizer/vocab.json", fx.dir() + "/data/clip_tokenizer/merges.txt"));
  check("clip_bpe[bpe_simple_vocab_16e6.txt.gz]",
        ClipTokenizer::from_bpe_gz(fx.dir() + "/data/bpe_simple_vocab_16e6.txt.gz"));
}

void run_sentencepiece(const Fixture& fx, std::vector<ParityLine>& lines) {
  const auto rows = read_golden_rows(fx.path);
  const std::string model = fx.dir() + "/" + fx.sidecar.at("model_file").at("path").get<std::string>();
  const SentencePieceTokenizer tok = SentencePieceTokenizer::load(model);
  lines.push_back(check_rows("sentencepiece[ids+pieces]", rows, [&](const GoldenRow& r) {
    std::vector<int> ids;
    std::vector<std::string> pieces;
    tok.encode(r.text, &ids, &pieces);
    if (ids != r.ids) return "got " + ids_string(ids) + ", want " + ids_string(r.ids);
    if (!r.pieces.empty() && pieces != r.pieces) return std::string("pieces differ");
    return std::string();
  }));
}

// transformers.CLIPImageProcessor: resize (Pillow bicubic), centre crop, rescale, normalise.
void run_clip_image_processor(const Fixture& fx, std::vector<ParityLine>& lines) {
  const at::Tensor hwc = fx.tensor("input.image_hwc_uint8").to(at::kByte).contiguous();  // stored as I64
  Image img(static_cast<int>(hwc.size(1)), static_cast<int>(hwc.size(0)), static_cast<int>(hwc.size(2)));
  std::memcpy(img.pixels.data(), hwc.data_ptr<uint8_t>(), img.pixels.size());
  const ClipPreprocessConfig cfg = ClipPreprocessConfig::from_json(fx.config);
  int h = 0, w = 0;
  std::vector<float> chw = clip_preprocess(img, cfg, &h, &w);
  at::Tensor got = at::from_blob(chw.data(), {1, 3, h, w}, at::kFloat).clone();
  lines.push_back(compare("pixel_values", got, fx.tensor("output.pixel_values")));
}

}  // namespace

void register_core_parity(ParityRegistry& r) {
  r.add("transformers.CLIPImageProcessor", run_clip_image_processor);
  r.add("clip.simple_tokenizer", run_clip_tokenizer);
  r.add("sentencepiece", run_sentencepiece);
}

}  // namespace iris
