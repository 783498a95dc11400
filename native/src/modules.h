// Each native module registers its exports here; addon.cc calls them all.
#pragma once

#include <napi.h>

namespace mdevkit {

void InitFdOps(Napi::Env env, Napi::Object exports);         // fd_ops.cc: memfd, eventfd, pread/pwrite, close
void InitMmap(Napi::Env env, Napi::Object exports);          // mmap.cc: mmap an fd into an ArrayBuffer
void InitUnixSocket(Napi::Env env, Napi::Object exports);    // unix_socket.cc: AF_UNIX + SCM_RIGHTS
void InitIoctl(Napi::Env env, Napi::Object exports);         // ioctl.cc: generic ioctl with pointer marshaling
void InitFdWatcher(Napi::Env env, Napi::Object exports);     // fd_watcher.cc: fd readiness on the libuv loop
void InitDirtyBitmap(Napi::Env env, Napi::Object exports);   // dirty_bitmap.cc: the dirty-tracking core
void InitMaskedStorage(Napi::Env env, Napi::Object exports); // masked_storage.cc: register/config byte semantics
void InitRegionTable(Napi::Env env, Napi::Object exports);   // region_table.cc: region dispatch (native or JS)
void InitVfioUserConn(Napi::Env env, Napi::Object exports);  // vfio_user_conn.cc: vfio-user server connection
void InitVfioAbi(Napi::Env env, Napi::Object exports);       // vfio_abi.cc: <linux/vfio.h> layouts for ABI tests
void InitIoreqEngine(Napi::Env env, Napi::Object exports);   // ioreq_engine.cc: Xen IOREQ server hot path
void InitXenAbi(Napi::Env env, Napi::Object exports);        // xen_abi.cc: Xen and privcmd/evtchn layouts for ABI tests
void InitPageScan(Napi::Env env, Napi::Object exports);      // page_scan.cc: changed-page detection by hashing
void InitPoll(Napi::Env env, Napi::Object exports);          // poll.cc: blocking poll(2) for synchronous clients

}  // namespace mdevkit
