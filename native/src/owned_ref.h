// References from a wrapped native object to JS values it needs for as long as it lives.
//
// A Napi::Persistent is a GC root. A wrapper that holds a callback by a persistent reference, where
// the callback closes over whatever owns the wrapper (a session, a server), roots that whole cycle:
// nothing in it is ever collected, even after the wrapper is closed and forgotten. Storing the value
// as a property of the wrapper itself (under a fresh symbol, non-enumerable, read-only) keeps the
// cycle inside the heap, where the GC can see it is unreachable; a weak reference gives native code
// fast access, and is valid for as long as the wrapper is (the property keeps the value alive).
#pragma once

#include <napi.h>

namespace mdevkit {

inline void AttachToOwner(Napi::Object owner, const char* name, Napi::Value value) {
  owner.DefineProperty(Napi::PropertyDescriptor::Value(Napi::Symbol::New(owner.Env(), name), value, napi_default));
}

// A callback owned by `owner`.
inline Napi::FunctionReference OwnedFunction(Napi::Object owner, const char* name, Napi::Function fn) {
  AttachToOwner(owner, name, fn);
  return Napi::Weak(fn);
}

// Any value owned by `owner` (buffers whose memory native code points into, other wrappers).
inline Napi::Reference<Napi::Value> OwnedValue(Napi::Object owner, const char* name, Napi::Value value) {
  AttachToOwner(owner, name, value);
  return Napi::Weak(value);
}

}  // namespace mdevkit
