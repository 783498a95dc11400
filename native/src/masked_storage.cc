#include "errors.h"
#include "modules.h"

namespace mdevkit {

void InitMaskedStorage(Napi::Env env, Napi::Object exports) {}

}  // namespace mdevkit
