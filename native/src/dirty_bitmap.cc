#include "errors.h"
#include "modules.h"

namespace mdevkit {

void InitDirtyBitmap(Napi::Env env, Napi::Object exports) {}

}  // namespace mdevkit
