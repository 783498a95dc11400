#include "errors.h"
#include "modules.h"

namespace mdevkit {

void InitFdOps(Napi::Env env, Napi::Object exports) {}

}  // namespace mdevkit
