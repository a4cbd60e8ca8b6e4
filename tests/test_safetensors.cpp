// safetensors reader/writer: bit-exact round trips and strict validation of bad files.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "core/error.h"
#include "tests/test_util.h"
#include "core/safetensors.h"

using namespace iris;
namespace fs = std::filesystem;

namespace {

std::string temp_path(const std::string& name) { return iris::testing_util::scratch(name); }

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// A file image with a given header length field, header text and data bytes.
std::string file_image(uint64_t header_len, const std::string& header, const std::string& data) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>(header_len >> (8 * i));
  return out + header + data;
}
std::string file_image(const std::string& header, const std::string& data) {
  return file_image(header.size(), header, data);
}

// Expects FormatError whose message contains every fragment.
void expect_format_error(const std::string& bytes, std::initializer_list<const char*> fragments) {
  const std::string path = temp_path("bad.safetensors");
  write_bytes(path, bytes);
  try {
    SafetensorsFile f(path);
    FAIL() << "no error for a bad file";
  } catch (const FormatError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(path), std::string::npos) << msg;
    for (const char* frag : fragments) EXPECT_NE(msg.find(frag), std::string::npos) << "'" << frag << "' not in: " << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << "error must be one line: " << msg;
  }
}

}  // namespace

TEST(Safetensors, RoundTripEveryDtypeBitExact) {
  std::mt19937 rng(7);
  SafetensorsWriter w;
  const DType all[] = {DType::F64, DType::F32, DType::F16, DType::BF16, DType::I64,
                       DType::I32, DType::I16, DType::I8,  DType::U8,   DType::BOOL};
  std::map<std::string, std::vector<uint8_t>> expected;
  for (DType t : all) {
    const std::vector<int64_t> shape = {3, 5};
    std::vector<uint8_t> bytes(15 * dtype_size(t));
    for (auto& b : bytes) b = static_cast<uint8_t>(rng());
    if (t == DType::BOOL)
      for (auto& b : bytes) b &= 1;
    w.add(std::string("t.") + dtype_name(t), t, shape, bytes.data(), bytes.size());
    expected[std::string("t.") + dtype_name(t)] = bytes;
  }
  w.add("scalar", DType::F32, {}, "\0\0\x80\x3f", 4);
  w.add("empty", DType::F32, {0, 4}, nullptr, 0);
  w.set_metadata("format", "pt");
  w.set_metadata("note", "uni\xc3\xa7ode \"quoted\"");
  const std::string path = temp_path("rt.safetensors");
  w.write(path);

  SafetensorsFile f(path);
  EXPECT_EQ(f.tensors().size(), expected.size() + 2);
  EXPECT_EQ(f.metadata().at("note"), "uni\xc3\xa7ode \"quoted\"");
  for (const auto& [name, bytes] : expected) {
    const TensorInfo& t = f.at(name);
    ASSERT_EQ(t.nbytes(), bytes.size()) << name;
    EXPECT_EQ(std::memcmp(f.data(t), bytes.data(), bytes.size()), 0) << name;
    EXPECT_EQ(t.shape, (std::vector<int64_t>{3, 5}));
  }
  EXPECT_EQ(f.at("scalar").shape.size(), 0u);
  EXPECT_EQ(f.read_f32(f.at("scalar"))[0], 1.0f);
  EXPECT_EQ(f.at("empty").numel(), 0);
  // Writing what was read gives the same file, byte for byte.
  SafetensorsWriter w2;
  for (const auto& kv : f.metadata()) w2.set_metadata(kv.first, kv.second);
  for (const TensorInfo& t : f.tensors()) w2.add(t.name, t.dtype, t.shape, f.data(t), t.nbytes());
  EXPECT_EQ(w2.serialize(), w.serialize());
  // The data section starts 8-byte aligned.
  EXPECT_EQ(parse_safetensors(w.serialize().data(), w.serialize().size(), "x").data_start % 8, 0u);
}

TEST(Safetensors, HalfAndBf16ConvertToF32) {
  const float values[] = {0.f, 1.f, -2.5f, 65504.f, 6.1035156e-05f, 5.9604645e-08f, 0.333251953125f};
  for (float v : values) {
    EXPECT_EQ(half_to_float(float_to_half(v)), v) << v;
    EXPECT_EQ(bf16_to_float(float_to_bf16(v)), bf16_to_float(float_to_bf16(bf16_to_float(float_to_bf16(v)))));
  }
  EXPECT_EQ(float_to_half(1.0f), 0x3c00);
  EXPECT_EQ(float_to_bf16(1.0f), 0x3f80);
  EXPECT_TRUE(std::isinf(half_to_float(float_to_half(1e6f))));
  EXPECT_TRUE(std::isnan(half_to_float(float_to_half(NAN))));
  // Ties round to even: 1 + 2^-11 is halfway between two halves.
  EXPECT_EQ(float_to_half(1.0f + 1.0f / 2048), 0x3c00);
  EXPECT_EQ(float_to_bf16(1.0f + 1.0f / 256), 0x3f80);
}

TEST(Safetensors, RejectsTooShortAndBadHeaderLengths) {
  expect_format_error("", {"too short"});
  expect_format_error(std::string("\x05\0\0", 3), {"too short"});
  expect_format_error(file_image(0, "", ""), {"header length is 0"});
  expect_format_error(file_image(uint64_t(1) << 63, "{}", ""), {"exceeds the limit"});
  expect_format_error(file_image(1000, "{}", ""), {"beyond the end of the file"});
}

TEST(Safetensors, RejectsMalformedJson) {
  expect_format_error(file_image("{\"a\": ", ""), {"malformed JSON"});
  expect_format_error(file_image("[1, 2]  ", ""), {"start with '{'"});
  expect_format_error(file_image("{} trailing", ""), {"malformed JSON"});
  expect_format_error(file_image("{\"a\": 3}", ""), {"\"a\"", "entry must be an object"});
}

TEST(Safetensors, RejectsBadEntries) {
  const std::string d8(8, '\0');
  expect_format_error(file_image(R"({"a":{"dtype":"F99","shape":[2],"data_offsets":[0,8]}})", d8),
                      {"\"a\"", "unknown dtype \"F99\""});
  expect_format_error(file_image(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", d8),
                      {"\"a\"", "needs 12"});
  expect_format_error(file_image(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", d8),
                      {"non-negative"});
  expect_format_error(file_image(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", d8),
                      {"end before begin"});
  expect_format_error(file_image(R"({"a":{"dtype":"F32","shape":[2]}})", d8), {"data_offsets"});
  expect_format_error(file_image(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":1}})", d8),
                      {"unknown field \"x\""});
  expect_format_error(
      file_image(R"({"a":{"dtype":"U8","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,8]}})", d8),
      {"absurdly large"});
  expect_format_error(file_image(R"({"__metadata__":{"k":3}})", ""), {"__metadata__", "not a string"});
}

TEST(Safetensors, RejectsOverlapGapOutOfRangeAndDuplicates) {
  const std::string d8(8, '\0');
  expect_format_error(file_image(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                                 R"("b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", d8),
                      {"overlap"});
  expect_format_error(file_image(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", d8), {"gap"});
  expect_format_error(file_image(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", d8),
                      {"beyond the data section", "truncated"});
  expect_format_error(file_image(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", d8),
                      {"cover 4"});
  expect_format_error(file_image(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                                 R"("a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", d8),
                      {"duplicate key \"a\""});
}

TEST(Safetensors, RejectsTruncatedRealFile) {
  SafetensorsWriter w;
  std::vector<float> v(100, 1.5f);
  w.add("w", DType::F32, {100}, v.data(), v.size() * 4);
  std::vector<uint8_t> bytes = w.serialize();
  for (size_t cut : {size_t(4), size_t(20), bytes.size() / 2, bytes.size() - 1}) {
    std::string s(bytes.begin(), bytes.begin() + static_cast<long>(cut));
    const std::string path = temp_path("cut.safetensors");
    write_bytes(path, s);
    EXPECT_THROW(SafetensorsFile f(path), FormatError) << "cut at " << cut;
  }
}

TEST(Safetensors, MissingFileIsIoError) {
  EXPECT_THROW(SafetensorsFile f(temp_path("does-not-exist.safetensors")), IoError);
  EXPECT_THROW(SafetensorsFile f(testing::TempDir()), IoError);
}

TEST(Safetensors, ShardedIndex) {
  const fs::path dir = fs::path(testing::TempDir()) / "sharded";
  fs::create_directories(dir);
  float a[2] = {1, 2}, b[3] = {3, 4, 5};
  SafetensorsWriter w1, w2;
  w1.add("layer.0.weight", DType::F32, {2}, a, sizeof a);
  w2.add("layer.1.weight", DType::F32, {3}, b, sizeof b);
  w1.write((dir / "model-00001-of-00002.safetensors").string());
  w2.write((dir / "model-00002-of-00002.safetensors").string());
  const std::string index = (dir / "model.safetensors.index.json").string();
  write_bytes(index, R"({"metadata":{"total_size":20},"weight_map":{"layer.0.weight":"model-00001-of-00002.safetensors",)"
                     R"("layer.1.weight":"model-00002-of-00002.safetensors"}})");
  TensorStore s = TensorStore::open(index);
  EXPECT_EQ(s.size(), 2u);
  EXPECT_EQ(s.files().size(), 2u);
  EXPECT_EQ(s.file_of("layer.1.weight").read_f32(s.info("layer.1.weight"))[2], 5.0f);
  EXPECT_EQ(s.metadata().at("total_size"), "20");
  EXPECT_THROW(s.info("nope"), CheckpointError);

  write_bytes(index, R"({"weight_map":{"layer.0.weight":"model-00002-of-00002.safetensors"}})");
  EXPECT_THROW(TensorStore::open(index), FormatError);
  write_bytes(index, R"({"weight_map":{"layer.0.weight":"missing.safetensors"}})");
  EXPECT_THROW(TensorStore::open(index), IoError);
  write_bytes(index, R"({"weight_map":{"layer.0.weight":"../x.safetensors"}})");
  EXPECT_THROW(TensorStore::open(index), FormatError);
  write_bytes(index, R"({"weight_map": 3})");
  EXPECT_THROW(TensorStore::open(index), FormatError);
  write_bytes(index, R"({"weight_map": )");
  EXPECT_THROW(TensorStore::open(index), FormatError);
}

TEST(Safetensors, EveryFixtureOpensAndLists) {
  size_t opened = 0;
  for (const auto& e : fs::directory_iterator(IRIS_FIXTURES_DIR)) {
    if (e.path().extension() != ".safetensors") continue;
    SafetensorsFile f(e.path().string());
    EXPECT_FALSE(f.tensors().empty()) << e.path();
    EXPECT_TRUE(f.metadata().count("class") || f.metadata().count("versions")) << e.path();
    for (const TensorInfo& t : f.tensors()) EXPECT_EQ(static_cast<size_t>(t.numel()) * dtype_size(t.dtype), t.nbytes());
    ++opened;
  }
  EXPECT_GE(opened, 20u);
}
