#pragma once
// safetensors: 8-byte little-endian header length N, N bytes of JSON header, then the data.
// Header: {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
//          "__metadata__": {"k": "v"}}; offsets are relative to the data section.
// Validation is strict, as the format defines it: N bounded and inside the file, JSON an
// object, no duplicate names, known dtypes, end - begin = elements x dtype size, tensors
// contiguous in offset order from 0 to the end of the file (no overlap, no gap).
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/mmap_file.h"

namespace iris {

// Largest header accepted (the reference implementation uses the same bound).
constexpr uint64_t kSafetensorsMaxHeader = 100ull * 1024 * 1024;

struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // offset in the data section
  uint64_t end = 0;
  int64_t numel() const;
  size_t nbytes() const { return static_cast<size_t>(end - begin); }
};

struct SafetensorsHeader {
  std::vector<TensorInfo> tensors;  // in the file's offset order
  std::map<std::string, std::string> metadata;
  uint64_t data_start = 0;  // 8 + N
};

// Parses and validates a whole file image held in memory. `what` names it in errors.
// Throws FormatError.
SafetensorsHeader parse_safetensors(const uint8_t* bytes, size_t size, const std::string& what);

// A memory-mapped safetensors file.
class SafetensorsFile {
 public:
  // Throws IoError / FormatError naming the path.
  explicit SafetensorsFile(const std::string& path);

  const std::string& path() const { return file_.path(); }
  const std::vector<TensorInfo>& tensors() const { return header_.tensors; }
  const std::map<std::string, std::string>& metadata() const { return header_.metadata; }
  // nullptr when absent.
  const TensorInfo* find(const std::string& name) const;
  // Throws CheckpointError naming the file and tensor when absent.
  const TensorInfo& at(const std::string& name) const;
  // Raw bytes of a tensor (little-endian, possibly unaligned).
  const uint8_t* data(const TensorInfo& t) const { return file_.data() + header_.data_start + t.begin; }
  // The tensor's elements converted to F32 (any floating or integer dtype).
  std::vector<float> read_f32(const TensorInfo& t) const;
  // Drops the tensor's mapped pages from the resident set (MappedFile::drop_pages).
  void drop_pages(const TensorInfo& t) const { file_.drop_pages(header_.data_start + t.begin, t.nbytes()); }

 private:
  MappedFile file_;
  SafetensorsHeader header_;
  std::map<std::string, size_t> index_;
};

// Collects tensors and writes a valid file: sorted by name, header padded to 8 bytes.
class SafetensorsWriter {
 public:
  void set_metadata(const std::string& key, const std::string& value) { metadata_[key] = value; }
  // Copies `nbytes` = numel x dtype_size bytes. Throws on a duplicate name or size mismatch.
  void add(const std::string& name, DType dtype, const std::vector<int64_t>& shape, const void* data,
           size_t nbytes);
  // The whole file image.
  std::vector<uint8_t> serialize() const;
  // Atomic write (temp file + rename).
  void write(const std::string& path) const;

 private:
  struct Entry {
    DType dtype;
    std::vector<int64_t> shape;
    std::vector<uint8_t> bytes;
  };
  std::map<std::string, Entry> tensors_;
  std::map<std::string, std::string> metadata_;
};

// One name space of tensors over one file or a sharded checkpoint
// ("*.safetensors.index.json" with a "weight_map" {tensor: shard file}).
class TensorStore {
 public:
  // Opens a .safetensors file or a .safetensors.index.json.
  static TensorStore open(const std::string& path);

  std::vector<std::string> names() const;  // sorted
  size_t size() const { return entries_.size(); }
  bool contains(const std::string& name) const { return entries_.count(name) != 0; }
  const TensorInfo& info(const std::string& name) const;  // throws CheckpointError
  const SafetensorsFile& file_of(const std::string& name) const;
  const std::vector<std::shared_ptr<SafetensorsFile>>& files() const { return files_; }
  // Metadata of the first file (shards usually repeat it) plus the index's "metadata".
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::string& path() const { return path_; }

 private:
  struct Entry {
    size_t file;
    const TensorInfo* info;
  };
  std::string path_;
  std::vector<std::shared_ptr<SafetensorsFile>> files_;
  std::map<std::string, Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace iris
