#include "core/tensor_io.h"

#include <cstring>

#include "core/error.h"

namespace iris {

at::ScalarType scalar_type_of(DType t) {
  switch (t) {
    case DType::F64: return at::kDouble;
    case DType::F32: return at::kFloat;
    case DType::F16: return at::kHalf;
    case DType::BF16: return at::kBFloat16;
    case DType::I64: return at::kLong;
    case DType::I32: return at::kInt;
    case DType::I16: return at::kShort;
    case DType::I8: return at::kChar;
    case DType::U8: return at::kByte;
    case DType::BOOL: return at::kBool;
  }
  return at::kFloat;
}

DType dtype_of(at::ScalarType t) {
  switch (t) {
    case at::kDouble: return DType::F64;
    case at::kFloat: return DType::F32;
    case at::kHalf: return DType::F16;
    case at::kBFloat16: return DType::BF16;
    case at::kLong: return DType::I64;
    case at::kInt: return DType::I32;
    case at::kShort: return DType::I16;
    case at::kChar: return DType::I8;
    case at::kByte: return DType::U8;
    case at::kBool: return DType::BOOL;
    default: throw FormatError(std::string("safetensors cannot store tensors of type ") + c10::toString(t));
  }
}

at::Tensor read_tensor_raw(const SafetensorsFile& f, const TensorInfo& t) {
  // Copy instead of wrapping the mapping: the data section need not be aligned, and the
  // tensor must outlive the file.
  at::Tensor out = at::empty(t.shape, at::TensorOptions().dtype(scalar_type_of(t.dtype)));
  if (t.nbytes() > 0) std::memcpy(out.data_ptr(), f.data(t), t.nbytes());
  return out;
}

at::Tensor read_tensor(const SafetensorsFile& f, const TensorInfo& t) {
  at::Tensor raw = read_tensor_raw(f, t);
  if (t.dtype == DType::F16 || t.dtype == DType::BF16 || t.dtype == DType::F64) return raw.to(at::kFloat);
  return raw;
}

at::Tensor read_tensor(const TensorStore& s, const std::string& name) {
  return read_tensor(s.file_of(name), s.info(name));
}

std::map<std::string, at::Tensor> read_all(const TensorStore& s) {
  std::map<std::string, at::Tensor> out;
  for (const std::string& name : s.names()) out.emplace(name, read_tensor(s, name));
  return out;
}

void add_tensor(SafetensorsWriter& w, const std::string& name, const at::Tensor& t) {
  at::Tensor c = t.detach().to(at::kCPU).contiguous();
  w.add(name, dtype_of(c.scalar_type()), c.sizes().vec(), c.data_ptr(), c.numel() * c.element_size());
}

void write_safetensors(const std::string& path, const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  SafetensorsWriter w;
  for (const auto& kv : metadata) w.set_metadata(kv.first, kv.second);
  for (const auto& [name, t] : tensors) add_tensor(w, name, t);
  w.write(path);
}

}  // namespace iris
