#include "core/runtime_env.h"

#include <unistd.h>

#include <cstdlib>

namespace iris {

void ensure_passive_openmp(int /*argc*/, char** argv) {
  if (std::getenv("OMP_WAIT_POLICY") || std::getenv("IRIS_NO_REEXEC")) return;
  setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
  execv("/proc/self/exe", argv);
  // execv failed (no /proc?): carry on with the default policy.
}

}  // namespace iris
