#include "errors.h"
#include "modules.h"

namespace mdevkit {

void InitVfioUserConn(Napi::Env env, Napi::Object exports) {}

}  // namespace mdevkit
