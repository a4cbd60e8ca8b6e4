#include "app/studio/gallery.h"

#include <algorithm>
#include <cctype>
#include <chrono>
#include <filesystem>

#include "core/error.h"
#include "core/png_text.h"

namespace iris::studio {

namespace fs = std::filesystem;

GalleryEntry read_gallery_entry(const std::string& path) {
  const PngText text = read_png_text(path);
  GalleryEntry e;
  e.path = path;
  e.params = params_from_metadata(text, path);
  for (const auto& [k, v] : text)
    if (k == "parameters") e.parameters = v;
  std::error_code ec;
  const auto t = fs::last_write_time(path, ec);
  if (!ec) e.mtime = std::chrono::duration_cast<std::chrono::seconds>(t.time_since_epoch()).count();
  return e;
}

std::vector<GalleryEntry> scan_gallery(const std::string& dir, std::vector<std::string>* skipped) {
  std::vector<GalleryEntry> out;
  std::error_code ec;
  if (dir.empty() || !fs::is_directory(dir, ec)) return out;
  for (const auto& item : fs::directory_iterator(dir, ec)) {
    if (!item.is_regular_file(ec) || item.path().extension() != ".png") continue;
    try {
      out.push_back(read_gallery_entry(item.path().string()));
    } catch (const std::exception& e) {
      if (skipped) skipped->push_back(e.what());
    }
  }
  std::sort(out.begin(), out.end(), [](const GalleryEntry& a, const GalleryEntry& b) {
    return a.mtime != b.mtime ? a.mtime > b.mtime : a.path > b.path;
  });
  return out;
}

std::vector<std::string> list_folder(const std::string& dir, const std::vector<std::string>& extensions) {
  std::vector<std::string> folders, files;
  std::error_code ec;
  fs::directory_iterator it(dir, ec);
  if (ec) throw IoError(dir + ": cannot list the folder: " + ec.message());
  for (const auto& item : it) {
    const std::string name = item.path().filename().string();
    if (name.empty() || name[0] == '.') continue;
    std::error_code e2;
    if (item.is_directory(e2)) {
      folders.push_back(name + "/");
      continue;
    }
    std::string ext = item.path().extension().string();
    std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
    if (extensions.empty() || std::find(extensions.begin(), extensions.end(), ext) != extensions.end())
      files.push_back(name);
  }
  std::sort(folders.begin(), folders.end());
  std::sort(files.begin(), files.end());
  folders.insert(folders.end(), files.begin(), files.end());
  return folders;
}

}  // namespace iris::studio
