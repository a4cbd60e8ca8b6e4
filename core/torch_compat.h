#pragma once
// The one place where LibTorch 1.13 (Debian, CPU) and 2.x (pip, CUDA) differ for Iris.
// Everything else includes this instead of testing versions itself.
#include <ATen/ATen.h>
#include <torch/version.h>

#define IRIS_TORCH_AT_LEAST(major, minor) \
  (TORCH_VERSION_MAJOR > (major) || (TORCH_VERSION_MAJOR == (major) && TORCH_VERSION_MINOR >= (minor)))

// at::scaled_dot_product_attention with an explicit `scale` argument exists from 2.1.
#define IRIS_HAS_FUSED_SDPA IRIS_TORCH_AT_LEAST(2, 1)

namespace iris {
// "1.13.0" etc., for --version and bench reports.
inline const char* torch_version_string() { return TORCH_VERSION; }
}  // namespace iris
