#include "errors.h"
#include "modules.h"

namespace mdevkit {

void InitMmap(Napi::Env env, Napi::Object exports) {}

}  // namespace mdevkit
