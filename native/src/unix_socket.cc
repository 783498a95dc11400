#include "errors.h"
#include "modules.h"

namespace mdevkit {

void InitUnixSocket(Napi::Env env, Napi::Object exports) {}

}  // namespace mdevkit
