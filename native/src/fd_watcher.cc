#include "errors.h"
#include "modules.h"

namespace mdevkit {

void InitFdWatcher(Napi::Env env, Napi::Object exports) {}

}  // namespace mdevkit
