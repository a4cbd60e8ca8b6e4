#include "pipelines/parity.h"

namespace iris {

void register_unet_vae_parity(ParityRegistry& /*r*/) {}

}  // namespace iris
