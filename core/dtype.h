#pragma once
// Element types of tensors stored on disk (the safetensors set) and conversions to F32.
#include <cstddef>
#include <cstdint>
#include <string>

namespace iris {

enum class DType { F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL };

// Bytes per element.
size_t dtype_size(DType t);
// The safetensors spelling: "F32", "BF16", ...
const char* dtype_name(DType t);
// Parses a safetensors dtype string; throws FormatError naming it when unknown.
DType parse_dtype(const std::string& s);
bool is_floating(DType t);

// Scalar conversions (round-to-nearest-even where narrowing).
float half_to_float(uint16_t h);
uint16_t float_to_half(float f);
float bf16_to_float(uint16_t b);
uint16_t float_to_bf16(float f);

// Converts `n` elements of type `t` at `src` (unaligned allowed) to float.
void convert_to_f32(DType t, const void* src, size_t n, float* dst);

}  // namespace iris
