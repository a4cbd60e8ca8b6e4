#include "pipelines/parity.h"

namespace iris {

void register_vlm_parity(ParityRegistry& /*r*/) {}

}  // namespace iris
