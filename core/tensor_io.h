#pragma once
// Bridge between safetensors files and LibTorch tensors.
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>

#include "core/safetensors.h"

namespace iris {

at::ScalarType scalar_type_of(DType t);
DType dtype_of(at::ScalarType t);  // throws FormatError for types safetensors cannot hold

// A copy of the tensor's bytes in its stored dtype (no conversion), CPU.
at::Tensor read_tensor_raw(const SafetensorsFile& f, const TensorInfo& t);
// As stored, except F16/BF16/F64 become F32: LibTorch 1.13 cannot compute in F16 on CPU.
at::Tensor read_tensor(const SafetensorsFile& f, const TensorInfo& t);
at::Tensor read_tensor(const TensorStore& s, const std::string& name);

// Every tensor of a store (names as stored), converted as read_tensor does.
std::map<std::string, at::Tensor> read_all(const TensorStore& s);

// Writes tensors (any device; made contiguous on CPU) with metadata.
void write_safetensors(const std::string& path, const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata = {});
void add_tensor(SafetensorsWriter& w, const std::string& name, const at::Tensor& t);

}  // namespace iris
