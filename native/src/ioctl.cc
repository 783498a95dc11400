#include "errors.h"
#include "modules.h"

namespace mdevkit {

void InitIoctl(Napi::Env env, Napi::Object exports) {}

}  // namespace mdevkit
