#include "core/runtime_env.h"

#include <malloc.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <string>

namespace iris {

namespace {
constexpr const char* kHugePagesTunable = "glibc.malloc.hugetlb=1";
}  // namespace

void ensure_passive_openmp(int /*argc*/, char** argv, bool huge_pages) {
  if (std::getenv("IRIS_NO_REEXEC")) return;
  bool changed = false;
  if (!std::getenv("OMP_WAIT_POLICY")) {
    setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
    changed = true;
  }
  const char* tunables = std::getenv("GLIBC_TUNABLES");
  if (huge_pages && !(tunables && std::strstr(tunables, kHugePagesTunable))) {
    std::string t = tunables && *tunables ? std::string(tunables) + ":" + kHugePagesTunable : kHugePagesTunable;
    setenv("GLIBC_TUNABLES", t.c_str(), 1);
    changed = true;
  }
  if (!changed) return;
  execv("/proc/self/exe", argv);
  // execv failed (no /proc?): carry on with the default policy.
}

void keep_freed_memory() {
  mallopt(M_MMAP_MAX, 0);               // big blocks from the heap, so that they can be reused
  mallopt(M_TRIM_THRESHOLD, 1 << 30);   // and never trimmed back between steps
  mallopt(M_TOP_PAD, 64 << 20);
}

void release_free_memory() { malloc_trim(0); }

}  // namespace iris
