#include "errors.h"
#include "modules.h"

namespace mdevkit {

void InitRegionTable(Napi::Env env, Napi::Object exports) {}

}  // namespace mdevkit
