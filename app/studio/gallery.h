#pragma once
// The gallery: results found in the output folder, each with the parameters read back from its
// PNG metadata (so a restart, or results from `iris render`, show up the same way).
#include <cstdint>
#include <string>
#include <vector>

#include "pipelines/stable_diffusion.h"

namespace iris::studio {

struct GalleryEntry {
  std::string path;
  GenerationParams params;  // from the "iris" text entry
  std::string parameters;   // the human-readable "parameters" entry
  int64_t mtime = 0;        // seconds since the epoch, for ordering
};

// Every *.png in `dir` (not recursive) with Iris parameters, newest first (then by name).
// PNGs without parameters or unreadable ones are skipped, with one line each in `skipped`.
// A missing folder gives an empty list.
std::vector<GalleryEntry> scan_gallery(const std::string& dir, std::vector<std::string>* skipped = nullptr);

// One entry from a file; FormatError / IoError naming it.
GalleryEntry read_gallery_entry(const std::string& path);

// Folder listing for the file picker: sub-folders first (with a trailing '/'), then files
// whose extension (lower-case, with the dot) is in `extensions` (all files when empty), each
// group sorted; hidden entries are skipped. IoError naming the folder when unreadable.
std::vector<std::string> list_folder(const std::string& dir, const std::vector<std::string>& extensions);

}  // namespace iris::studio
