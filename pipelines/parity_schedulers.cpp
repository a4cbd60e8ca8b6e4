#include "pipelines/parity.h"

namespace iris {

void register_scheduler_parity(ParityRegistry& /*r*/) {}

}  // namespace iris
