#include "errors.h"
#include "modules.h"

namespace mdevkit {

void InitPoll(Napi::Env env, Napi::Object exports) {}

}  // namespace mdevkit
