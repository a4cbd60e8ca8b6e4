#pragma once
// Image sizes as users type them: "512x768", or "auto" for the model's native size.
#include <string>
#include <utility>

namespace iris {

// "512x768" (or "512X768") -> (512, 768), both positive. ConfigError naming `what` and the text
// otherwise. Multiples of the VAE factor are checked where the model is known.
std::pair<int, int> parse_size_text(const std::string& text, const std::string& what);

// parse_size_text, or "auto" -> (0, 0): the model's native size (GenerationParams, resolved by
// with_native_size once the model is loaded).
std::pair<int, int> parse_image_size(const std::string& text, const std::string& what);

}  // namespace iris
