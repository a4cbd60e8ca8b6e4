#pragma once
// Config JSON helpers: parse with the file named in errors, typed getters that name the key.
#include <string>

#include <nlohmann/json.hpp>

namespace iris {

using Json = nlohmann::json;

// Parses a JSON file; throws IoError / FormatError naming the file (and line/column).
Json read_json_file(const std::string& path);
// Parses JSON text; `what` names the source in errors.
Json parse_json(const std::string& text, const std::string& what);

// Typed access: a missing key returns `fallback`; a present key of the wrong type throws
// ConfigError naming `what` and the key.
int64_t json_int(const Json& j, const std::string& key, int64_t fallback, const std::string& what);
double json_number(const Json& j, const std::string& key, double fallback, const std::string& what);
bool json_bool(const Json& j, const std::string& key, bool fallback, const std::string& what);
std::string json_string(const Json& j, const std::string& key, const std::string& fallback, const std::string& what);
// Required variants throw ConfigError when the key is absent.
int64_t json_require_int(const Json& j, const std::string& key, const std::string& what);
std::string json_require_string(const Json& j, const std::string& key, const std::string& what);

}  // namespace iris
