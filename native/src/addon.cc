// The mdevkit native core: one addon shared by the device model and both adapters.
#include <napi.h>

#include "modules.h"

namespace {

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  mdevkit::InitFdOps(env, exports);
  mdevkit::InitMmap(env, exports);
  mdevkit::InitUnixSocket(env, exports);
  mdevkit::InitIoctl(env, exports);
  mdevkit::InitFdWatcher(env, exports);
  mdevkit::InitDirtyBitmap(env, exports);
  mdevkit::InitMaskedStorage(env, exports);
  mdevkit::InitRegionTable(env, exports);
  mdevkit::InitVfioUserConn(env, exports);
  mdevkit::InitVfioAbi(env, exports);
  mdevkit::InitIoreqEngine(env, exports);
  mdevkit::InitXenAbi(env, exports);
  mdevkit::InitPoll(env, exports);
  mdevkit::InitPageScan(env, exports);
  return exports;
}

}  // namespace

NODE_API_MODULE(mdevkit_native, Init)
