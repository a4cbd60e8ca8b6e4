// Parity runners for what core implements: tokenizers and image preprocessing.
#include "pipelines/parity.h"

namespace iris {

void register_core_parity(ParityRegistry& /*r*/) {
  // Filled as the tokenizers and the CLIP image processor land.
}

}  // namespace iris
