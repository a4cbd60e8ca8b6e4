#include "pipelines/image_size.h"

#include <cstdio>

#include "core/error.h"

namespace iris {

std::pair<int, int> parse_size_text(const std::string& text, const std::string& what) {
  int w = 0, h = 0;
  char x = 0, extra = 0;
  if (std::sscanf(text.c_str(), "%d%c%d%c", &w, &x, &h, &extra) != 3 || (x != 'x' && x != 'X'))
    throw ConfigError(what + ": \"" + text + "\": expected WIDTHxHEIGHT, e.g. 512x512");
  if (w <= 0 || h <= 0) throw ConfigError(what + ": \"" + text + "\": width and height must be positive");
  return {w, h};
}

std::pair<int, int> parse_image_size(const std::string& text, const std::string& what) {
  if (text == "auto") return {0, 0};
  try {
    return parse_size_text(text, what);
  } catch (const ConfigError&) {
    throw ConfigError(what + ": \"" + text + "\": expected WIDTHxHEIGHT (e.g. 512x512, both positive) or auto");
  }
}

}  // namespace iris
