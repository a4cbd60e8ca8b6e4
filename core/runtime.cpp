#include "core/runtime.h"

#include <ATen/Parallel.h>
#include <torch/cuda.h>
#include <dlfcn.h>

#include <thread>

#include "core/error.h"

namespace iris {

void set_threads(int n) {
  if (n <= 0) n = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  at::set_num_threads(n);
  // LibTorch's GEMMs run on OpenBLAS where it is the BLAS (Debian), whose own thread pool
  // at::set_num_threads does not size: left at all cores, its idle threads spin (sched_yield)
  // while another process owns the CPU. Looked up at run time: other BLAS builds lack it.
  using SetThreads = void (*)(int);
  if (auto* f = reinterpret_cast<SetThreads>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"))) f(n);
}

int get_threads() { return at::get_num_threads(); }

bool cuda_available() { return torch::cuda::is_available(); }

c10::Device select_device(const std::string& spec) {
  if (spec == "cpu") return c10::Device(c10::kCPU);
  if (spec == "auto") return cuda_available() ? c10::Device(c10::kCUDA, 0) : c10::Device(c10::kCPU);
  if (spec == "cuda" || spec.rfind("cuda:", 0) == 0) {
    if (!cuda_available())
      throw ConfigError("device \"" + spec + "\": CUDA is not available in this build or on this machine");
    int index = 0;
    if (spec.size() > 5) {
      try {
        index = std::stoi(spec.substr(5));
      } catch (...) {
        throw ConfigError("device \"" + spec + "\": bad CUDA device index");
      }
      if (index < 0 || index >= static_cast<int>(torch::cuda::device_count()))
        throw ConfigError("device \"" + spec + "\": only " + std::to_string(torch::cuda::device_count()) +
                          " CUDA device(s)");
    }
    return c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(index));
  }
  throw ConfigError("device \"" + spec + "\": expected cpu, cuda, cuda:N or auto");
}

}  // namespace iris
