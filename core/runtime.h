#pragma once
// Threads and device selection for LibTorch.
#include <string>

#include <c10/core/Device.h>

namespace iris {

// Sets LibTorch's intra-op threads; 0 = one per hardware thread (Debian's LibTorch starts
// with 1 on this machine, NOTES.md).
void set_threads(int n);
int get_threads();

// "cpu", "cuda", "cuda:N" or "auto" (CUDA when available). Throws ConfigError when CUDA is
// asked for and not available, naming the value.
c10::Device select_device(const std::string& spec);
bool cuda_available();

}  // namespace iris
