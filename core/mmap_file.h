#pragma once
// Read-only memory map of a whole file. Empty files map to (nullptr, 0).
#include <cstddef>
#include <cstdint>
#include <string>

namespace iris {

class MappedFile {
 public:
  MappedFile() = default;
  // Throws IoError naming the path when it cannot be opened or mapped.
  explicit MappedFile(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  MappedFile(MappedFile&& o) noexcept;
  MappedFile& operator=(MappedFile&& o) noexcept;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }
  // Drops this process's pages of [offset, offset + length) (rounded out to whole pages) from
  // its resident set. The mapping is private and read-only, so nothing is lost: a later read
  // faults the same bytes back in from the page cache. Loaders call it once a tensor has been
  // copied out, so a multi-GB checkpoint never sits in RSS next to the model built from it.
  void drop_pages(size_t offset, size_t length) const;

 private:
  void release();
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// Reads a whole (small) file into a string; throws IoError naming the path.
std::string read_text_file(const std::string& path);
// Writes atomically: to "<path>.tmp" then rename, so a failed write never leaves a half file.
void write_file_atomic(const std::string& path, const void* data, size_t n);

}  // namespace iris
