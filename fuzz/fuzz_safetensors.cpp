// libFuzzer target: the safetensors parser must reject every malformed file with
// FormatError, never crash, hang or read outside the buffer.
#include <cstdint>
#include <cstring>

#include "core/error.h"
#include "core/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // Copy into an exact-size heap buffer so ASan sees any read past the end.
  auto* buf = new uint8_t[size ? size : 1];
  if (size) std::memcpy(buf, data, size);
  try {
    iris::SafetensorsHeader h = iris::parse_safetensors(buf, size, "fuzz");
    // Touch every tensor's bytes: a valid header must describe memory inside the buffer.
    volatile uint8_t sink = 0;
    for (const auto& t : h.tensors)
      for (uint64_t i = t.begin; i < t.end; i += 4096) sink ^= buf[h.data_start + i];
    (void)sink;
  } catch (const iris::FormatError&) {
  }
  delete[] buf;
  return 0;
}
