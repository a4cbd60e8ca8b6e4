#pragma once
// Seeded noise. Drawn on the CPU generator and then moved, because CPU and CUDA generators
// give different streams for one seed: a seed must mean the same image on every device.
#include <cstdint>

#include <ATen/ATen.h>

namespace iris {

// A standalone generator for one run (samplers that add noise at each step keep one).
at::Generator make_cpu_generator(uint64_t seed);

// randn of `shape` from `gen`, as float32, then moved to `device`.
at::Tensor seeded_randn(at::IntArrayRef shape, at::Generator& gen, const at::Device& device);

}  // namespace iris
