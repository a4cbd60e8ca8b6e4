#include "core/safetensors.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <set>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/error.h"

namespace iris {

using nlohmann::json;

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

namespace {

uint64_t read_u64_le(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

// nlohmann silently keeps the last of duplicate keys; the format forbids them, so the
// parser callback tracks the keys of every open object and rejects a repeat.
json parse_header_json(const char* begin, const char* end) {
  std::vector<std::set<std::string>> open_objects;
  auto callback = [&](int /*depth*/, json::parse_event_t event, json& parsed) {
    switch (event) {
      case json::parse_event_t::object_start: open_objects.emplace_back(); break;
      case json::parse_event_t::object_end: open_objects.pop_back(); break;
      case json::parse_event_t::key: {
        const std::string& k = parsed.get_ref<const std::string&>();
        if (!open_objects.back().insert(k).second) throw FormatError("duplicate key \"" + k + "\" in header");
        break;
      }
      default: break;
    }
    return true;
  };
  try {
    return json::parse(begin, end, callback);
  } catch (const json::exception& e) {
    throw FormatError(std::string("malformed JSON header: ") + e.what());
  }
}

uint64_t as_u64(const json& v, const std::string& what) {
  if (!v.is_number_unsigned()) throw FormatError(what + " must be a non-negative integer, found " + v.dump());
  return v.get<uint64_t>();
}

TensorInfo parse_entry(const std::string& name, const json& e) {
  const std::string where = "tensor \"" + name + "\"";
  if (!e.is_object()) throw FormatError(where + ": entry must be an object");
  for (auto it = e.begin(); it != e.end(); ++it)
    if (it.key() != "dtype" && it.key() != "shape" && it.key() != "data_offsets")
      throw FormatError(where + ": unknown field \"" + it.key() + "\"");
  if (!e.contains("dtype") || !e["dtype"].is_string()) throw FormatError(where + ": missing or non-string dtype");
  if (!e.contains("shape") || !e["shape"].is_array()) throw FormatError(where + ": missing or non-array shape");
  if (!e.contains("data_offsets") || !e["data_offsets"].is_array() || e["data_offsets"].size() != 2)
    throw FormatError(where + ": data_offsets must be [begin, end]");
  TensorInfo t;
  t.name = name;
  try {
    t.dtype = parse_dtype(e["dtype"].get<std::string>());
  } catch (const FormatError& err) {
    throw FormatError(where + ": " + err.what());
  }
  // Element count must stay far from overflow: every byte count below fits in 63 bits.
  const uint64_t kMaxElements = uint64_t(1) << 56;
  uint64_t numel = 1;
  for (const json& d : e["shape"]) {
    uint64_t v = as_u64(d, where + ": shape entry");
    if (v != 0 && numel > kMaxElements / v) throw FormatError(where + ": shape " + e["shape"].dump() + " is absurdly large");
    numel *= v;
    t.shape.push_back(static_cast<int64_t>(v));
  }
  t.begin = as_u64(e["data_offsets"][0], where + ": data_offsets[0]");
  t.end = as_u64(e["data_offsets"][1], where + ": data_offsets[1]");
  if (t.end < t.begin)
    throw FormatError(where + ": data_offsets [" + std::to_string(t.begin) + ", " + std::to_string(t.end) + "] end before begin");
  const uint64_t want = numel * dtype_size(t.dtype);
  if (t.end - t.begin != want)
    throw FormatError(where + ": " + std::to_string(t.end - t.begin) + " bytes in data_offsets, but " +
                      dtype_name(t.dtype) + " " + e["shape"].dump() + " needs " + std::to_string(want));
  return t;
}

}  // namespace

SafetensorsHeader parse_safetensors(const uint8_t* bytes, size_t size, const std::string& what) {
  try {
    if (size < 8) throw FormatError("file too short (" + std::to_string(size) + " bytes) for a safetensors header");
    const uint64_t n = read_u64_le(bytes);
    if (n == 0) throw FormatError("header length is 0");
    if (n > kSafetensorsMaxHeader)
      throw FormatError("header length " + std::to_string(n) + " exceeds the limit of " +
                        std::to_string(kSafetensorsMaxHeader) + " bytes");
    if (n > size - 8)
      throw FormatError("header length " + std::to_string(n) + " goes beyond the end of the file (" +
                        std::to_string(size) + " bytes): truncated?");
    const char* hb = reinterpret_cast<const char*>(bytes + 8);
    if (hb[0] != '{') throw FormatError("header does not start with '{'");
    json header = parse_header_json(hb, hb + n);
    if (!header.is_object()) throw FormatError("header is not a JSON object");

    SafetensorsHeader out;
    out.data_start = 8 + n;
    for (auto it = header.begin(); it != header.end(); ++it) {
      if (it.key() == "__metadata__") {
        if (!it.value().is_object()) throw FormatError("__metadata__ must be an object of strings");
        for (auto m = it.value().begin(); m != it.value().end(); ++m) {
          if (!m.value().is_string()) throw FormatError("__metadata__ value of \"" + m.key() + "\" is not a string");
          out.metadata[m.key()] = m.value().get<std::string>();
        }
        continue;
      }
      out.tensors.push_back(parse_entry(it.key(), it.value()));
    }

    // Tensors must tile the data section exactly: in offset order, from 0, no gap, no overlap.
    std::stable_sort(out.tensors.begin(), out.tensors.end(), [](const TensorInfo& a, const TensorInfo& b) {
      return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
    });
    const uint64_t data_size = size - out.data_start;
    uint64_t cursor = 0;
    for (const TensorInfo& t : out.tensors) {
      if (t.begin < cursor)
        throw FormatError("tensor \"" + t.name + "\" data_offsets [" + std::to_string(t.begin) + ", " +
                          std::to_string(t.end) + "] overlap the previous tensor (which ends at " +
                          std::to_string(cursor) + ")");
      if (t.begin > cursor)
        throw FormatError("gap in the data section before tensor \"" + t.name + "\" (bytes " +
                          std::to_string(cursor) + " to " + std::to_string(t.begin) + " unused)");
      if (t.end > data_size)
        throw FormatError("tensor \"" + t.name + "\" data_offsets end " + std::to_string(t.end) +
                          " beyond the data section (" + std::to_string(data_size) + " bytes): truncated?");
      cursor = t.end;
    }
    if (cursor != data_size)
      throw FormatError("data section has " + std::to_string(data_size) + " bytes but the tensors cover " +
                        std::to_string(cursor));
    return out;
  } catch (...) {
    rethrow_with_context(what);
  }
}

SafetensorsFile::SafetensorsFile(const std::string& path) : file_(path) {
  header_ = parse_safetensors(file_.data(), file_.size(), path);
  for (size_t i = 0; i < header_.tensors.size(); ++i) index_[header_.tensors[i].name] = i;
}

const TensorInfo* SafetensorsFile::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &header_.tensors[it->second];
}

const TensorInfo& SafetensorsFile::at(const std::string& name) const {
  const TensorInfo* t = find(name);
  if (!t) throw CheckpointError(path() + ": no tensor named \"" + name + "\"");
  return *t;
}

std::vector<float> SafetensorsFile::read_f32(const TensorInfo& t) const {
  std::vector<float> out(static_cast<size_t>(t.numel()));
  convert_to_f32(t.dtype, data(t), out.size(), out.data());
  return out;
}

void SafetensorsWriter::add(const std::string& name, DType dtype, const std::vector<int64_t>& shape,
                            const void* data, size_t nbytes) {
  if (name.empty() || name == "__metadata__") throw FormatError("invalid tensor name \"" + name + "\"");
  if (tensors_.count(name)) throw FormatError("duplicate tensor name \"" + name + "\"");
  size_t numel = 1;
  for (int64_t d : shape) {
    if (d < 0) throw ShapeError("tensor \"" + name + "\": negative dimension");
    numel *= static_cast<size_t>(d);
  }
  if (numel * dtype_size(dtype) != nbytes)
    throw ShapeError("tensor \"" + name + "\": " + std::to_string(nbytes) + " bytes given for " +
                     std::to_string(numel) + " elements of " + dtype_name(dtype));
  Entry e{dtype, shape, std::vector<uint8_t>(static_cast<const uint8_t*>(data), static_cast<const uint8_t*>(data) + nbytes)};
  tensors_.emplace(name, std::move(e));
}

std::vector<uint8_t> SafetensorsWriter::serialize() const {
  json header = json::object();
  uint64_t offset = 0;
  for (const auto& [name, e] : tensors_) {
    header[name] = {{"dtype", dtype_name(e.dtype)}, {"shape", e.shape}, {"data_offsets", {offset, offset + e.bytes.size()}}};
    offset += e.bytes.size();
  }
  if (!metadata_.empty()) header["__metadata__"] = metadata_;
  std::string text = header.dump();
  while (text.size() % 8 != 0) text.push_back(' ');  // data section starts 8-byte aligned
  std::vector<uint8_t> out;
  out.reserve(8 + text.size() + offset);
  uint64_t n = text.size();
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<uint8_t>(n >> (8 * i)));
  out.insert(out.end(), text.begin(), text.end());
  for (const auto& kv : tensors_) out.insert(out.end(), kv.second.bytes.begin(), kv.second.bytes.end());
  return out;
}

void SafetensorsWriter::write(const std::string& path) const {
  std::vector<uint8_t> bytes = serialize();
  write_file_atomic(path, bytes.data(), bytes.size());
}

namespace {
std::string dirname_of(const std::string& path) {
  auto slash = path.find_last_of('/');
  return slash == std::string::npos ? std::string(".") : path.substr(0, slash);
}
bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}
}  // namespace

TensorStore TensorStore::open(const std::string& path) {
  TensorStore store;
  store.path_ = path;
  if (!ends_with(path, ".json")) {
    auto f = std::make_shared<SafetensorsFile>(path);
    for (const TensorInfo& t : f->tensors()) store.entries_[t.name] = Entry{0, &t};
    store.metadata_ = f->metadata();
    store.files_.push_back(std::move(f));
    return store;
  }
  // Sharded: {"metadata": {...}, "weight_map": {"tensor": "model-00001-of-00002.safetensors"}}
  json index;
  try {
    index = json::parse(read_text_file(path));
  } catch (const json::exception& e) {
    throw FormatError(path + ": malformed JSON: " + e.what());
  }
  if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object())
    throw FormatError(path + ": not a sharded-checkpoint index (no \"weight_map\" object)");
  if (index.contains("metadata") && index["metadata"].is_object())
    for (auto it = index["metadata"].begin(); it != index["metadata"].end(); ++it)
      store.metadata_[it.key()] = it.value().is_string() ? it.value().get<std::string>() : it.value().dump();
  const std::string dir = dirname_of(path);
  std::map<std::string, size_t> shard_index;
  for (auto it = index["weight_map"].begin(); it != index["weight_map"].end(); ++it) {
    if (!it.value().is_string()) throw FormatError(path + ": weight_map[\"" + it.key() + "\"] is not a file name");
    const std::string shard = it.value().get<std::string>();
    if (shard.find('/') != std::string::npos || shard == ".." || shard.empty())
      throw FormatError(path + ": weight_map[\"" + it.key() + "\"] = \"" + shard + "\" is not a file in this folder");
    auto [si, inserted] = shard_index.emplace(shard, store.files_.size());
    if (inserted) store.files_.push_back(std::make_shared<SafetensorsFile>(dir + "/" + shard));
    const SafetensorsFile& f = *store.files_[si->second];
    const TensorInfo* t = f.find(it.key());
    if (!t) throw FormatError(path + ": weight_map names \"" + it.key() + "\" in " + shard + ", which does not hold it");
    store.entries_[it.key()] = Entry{si->second, t};
  }
  for (size_t i = 0; i < store.files_.size(); ++i) {
    for (const TensorInfo& t : store.files_[i]->tensors()) {
      auto e = store.entries_.find(t.name);
      if (e == store.entries_.end())
        throw FormatError(path + ": shard " + store.files_[i]->path() + " holds \"" + t.name + "\", which weight_map does not list");
      if (e->second.file != i)
        throw FormatError(path + ": tensor \"" + t.name + "\" appears in more than one shard");
    }
    if (i == 0)
      for (const auto& kv : store.files_[i]->metadata()) store.metadata_.emplace(kv.first, kv.second);
  }
  return store;
}

std::vector<std::string> TensorStore::names() const {
  std::vector<std::string> out;
  out.reserve(entries_.size());
  for (const auto& kv : entries_) out.push_back(kv.first);
  return out;
}

const TensorInfo& TensorStore::info(const std::string& name) const {
  auto it = entries_.find(name);
  if (it == entries_.end()) throw CheckpointError(path_ + ": no tensor named \"" + name + "\"");
  return *it->second.info;
}

const SafetensorsFile& TensorStore::file_of(const std::string& name) const {
  auto it = entries_.find(name);
  if (it == entries_.end()) throw CheckpointError(path_ + ": no tensor named \"" + name + "\"");
  return *files_[it->second.file];
}

}  // namespace iris
