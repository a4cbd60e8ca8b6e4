#include "diffusion/noise.h"

#include <ATen/CPUGeneratorImpl.h>

namespace iris {

at::Generator make_cpu_generator(uint64_t seed) {
  at::Generator gen = at::detail::createCPUGenerator(seed);
  return gen;
}

at::Tensor seeded_randn(at::IntArrayRef shape, at::Generator& gen, const at::Device& device) {
  at::Tensor t = at::randn(shape, gen, at::TensorOptions().dtype(at::kFloat));
  return device.is_cpu() ? t : t.to(device);
}

}  // namespace iris
