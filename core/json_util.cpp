#include "core/json_util.h"

#include "core/error.h"
#include "core/mmap_file.h"

namespace iris {

Json parse_json(const std::string& text, const std::string& what) {
  try {
    return Json::parse(text);
  } catch (const Json::exception& e) {
    throw FormatError(join_context(what, std::string("malformed JSON: ") + e.what()));
  }
}

Json read_json_file(const std::string& path) { return parse_json(read_text_file(path), path); }

namespace {
const Json* lookup(const Json& j, const std::string& key, const std::string& what) {
  if (!j.is_object()) throw ConfigError(join_context(what, "expected a JSON object"));
  auto it = j.find(key);
  return it == j.end() || it->is_null() ? nullptr : &*it;
}
[[noreturn]] void wrong_type(const std::string& what, const std::string& key, const char* want, const Json& v) {
  throw ConfigError(join_context(what, "key \"" + key + "\": expected " + want + ", found " + v.dump()));
}
}  // namespace

int64_t json_int(const Json& j, const std::string& key, int64_t fallback, const std::string& what) {
  const Json* v = lookup(j, key, what);
  if (!v) return fallback;
  if (!v->is_number_integer()) wrong_type(what, key, "an integer", *v);
  return v->get<int64_t>();
}

double json_number(const Json& j, const std::string& key, double fallback, const std::string& what) {
  const Json* v = lookup(j, key, what);
  if (!v) return fallback;
  if (!v->is_number()) wrong_type(what, key, "a number", *v);
  return v->get<double>();
}

bool json_bool(const Json& j, const std::string& key, bool fallback, const std::string& what) {
  const Json* v = lookup(j, key, what);
  if (!v) return fallback;
  if (!v->is_boolean()) wrong_type(what, key, "true or false", *v);
  return v->get<bool>();
}

std::string json_string(const Json& j, const std::string& key, const std::string& fallback, const std::string& what) {
  const Json* v = lookup(j, key, what);
  if (!v) return fallback;
  if (!v->is_string()) wrong_type(what, key, "a string", *v);
  return v->get<std::string>();
}

int64_t json_require_int(const Json& j, const std::string& key, const std::string& what) {
  if (!lookup(j, key, what)) throw ConfigError(join_context(what, "missing key \"" + key + "\""));
  return json_int(j, key, 0, what);
}

std::string json_require_string(const Json& j, const std::string& key, const std::string& what) {
  if (!lookup(j, key, what)) throw ConfigError(join_context(what, "missing key \"" + key + "\""));
  return json_string(j, key, "", what);
}

}  // namespace iris
