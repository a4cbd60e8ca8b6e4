# Third-party dependencies, all from Debian packages (scripts/setup.sh installs them).
find_package(Threads REQUIRED)
find_package(ZLIB REQUIRED)
find_package(PkgConfig REQUIRED)
pkg_check_modules(UTF8PROC REQUIRED IMPORTED_TARGET libutf8proc)

# Header-only libraries.
find_path(NLOHMANN_JSON_INCLUDE nlohmann/json.hpp REQUIRED)
find_path(CLI11_INCLUDE CLI/CLI.hpp REQUIRED)
find_path(STB_INCLUDE stb_image.h PATH_SUFFIXES stb REQUIRED)

if(IRIS_TORCH)
  # Debian libtorch-dev 1.13 (CPU) is found without hints; a pip PyTorch 2.x is found through
  # -DCMAKE_PREFIX_PATH=$(python3 -c 'import torch;print(torch.utils.cmake_prefix_path)').
  find_package(Torch REQUIRED)
  message(STATUS "LibTorch ${Torch_VERSION}")
  # CUDA wheels: libtorch_cuda.so must stay linked even though no symbol is referenced
  # directly, or torch::cuda::is_available() reports false (NOTES.md).
  set(IRIS_TORCH_LIBS ${TORCH_LIBRARIES})
  if(TARGET torch_cuda)
    set(IRIS_TORCH_LIBS -Wl,--no-as-needed torch_cuda -Wl,--as-needed ${TORCH_LIBRARIES})
  endif()
endif()
