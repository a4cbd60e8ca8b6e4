#include "pipelines/parity.h"

namespace iris {

void register_clip_parity(ParityRegistry& /*r*/) {}

}  // namespace iris
