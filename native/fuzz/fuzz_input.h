// Helpers shared by the fuzz targets: a reader over libFuzzer's input that never fails (past the
// end it yields zeros), and a checker for the fds a stream core owns and drops.
#pragma once

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <set>
#include <string>
#include <vector>

namespace mdevkit_fuzz {

class FuzzInput {
 public:
  FuzzInput(const uint8_t* data, size_t size) : p_(data), n_(size) {}

  bool empty() const { return n_ == 0; }
  size_t remaining() const { return n_; }

  uint8_t U8() { return static_cast<uint8_t>(Take(1)); }
  uint16_t U16() { return static_cast<uint16_t>(Take(2)); }
  uint32_t U32() { return static_cast<uint32_t>(Take(4)); }
  uint64_t U64() { return Take(8); }
  bool Bool() { return (U8() & 1) != 0; }

  // Up to `want` bytes, as many as are left.
  const uint8_t* Bytes(size_t want, size_t* got) {
    *got = want < n_ ? want : n_;
    const uint8_t* r = p_;
    p_ += *got;
    n_ -= *got;
    return r;
  }

  // A u64 that is often one of the values where range checks break: 0, 1, powers of two and their
  // neighbours, the top of the range.
  uint64_t Edgy() {
    uint8_t k = U8();
    switch (k & 7) {
      case 0: return 0;
      case 1: return uint64_t{1} << (U8() & 63);
      case 2: return (uint64_t{1} << (U8() & 63)) - 1;
      case 3: return (uint64_t{1} << (U8() & 63)) + 1;
      case 4: return ~uint64_t{0} - (U8() & 15);
      default: return U64();
    }
  }

 private:
  uint64_t Take(size_t k) {
    uint64_t v = 0;
    for (size_t i = 0; i < k && n_ > 0; i++, n_--) v |= static_cast<uint64_t>(*p_++) << (8 * i);
    return v;
  }
  const uint8_t* p_;
  size_t n_;
};

// An invariant that does not hold is a crash, so libFuzzer keeps the input.
#define FUZZ_CHECK(cond)                                                              \
  do {                                                                                \
    if (!(cond)) {                                                                    \
      std::fprintf(stderr, "FUZZ_CHECK failed: %s at %s:%d\n", #cond, __FILE__, __LINE__); \
      std::abort();                                                                   \
    }                                                                                 \
  } while (0)

// Fake fd numbers for the stream cores: each must be closed (or handed on) exactly once.
class FdLedger {
 public:
  int Open() {
    int fd = next_++;
    open_.insert(fd);
    return fd;
  }
  void Close(int fd) {
    // Closing an fd that is not open is a double close (or a close of someone else's fd).
    FUZZ_CHECK(open_.erase(fd) == 1);
  }
  bool IsOpen(int fd) const { return open_.count(fd) != 0; }
  size_t OpenCount() const { return open_.size(); }
  void Reset() {
    open_.clear();
    next_ = 1000;
  }

 private:
  std::set<int> open_;
  int next_ = 1000;
};

// Builds an input in the reading order of FuzzInput (seed corpora).
class Script {
 public:
  Script& U8(uint8_t v) { return Put(v, 1); }
  Script& U16(uint16_t v) { return Put(v, 2); }
  Script& U32(uint32_t v) { return Put(v, 4); }
  Script& U64(uint64_t v) { return Put(v, 8); }
  Script& Bytes(const void* p, size_t n) {
    const uint8_t* b = static_cast<const uint8_t*>(p);
    bytes_.insert(bytes_.end(), b, b + n);
    return *this;
  }
  Script& Bytes(const std::vector<uint8_t>& v) { return Bytes(v.data(), v.size()); }
  const std::vector<uint8_t>& bytes() const { return bytes_; }

 private:
  Script& Put(uint64_t v, size_t n) {
    for (size_t i = 0; i < n; i++) bytes_.push_back(static_cast<uint8_t>(v >> (8 * i)));
    return *this;
  }
  std::vector<uint8_t> bytes_;
};

// Seeds: with MDEVKIT_FUZZ_SEEDS=dir in the environment, a target's LLVMFuzzerInitialize writes
// its seed corpus (inputs built from valid protocol messages) into dir and exits.
class SeedWriter {
 public:
  // The directory to write into, or null when this run fuzzes.
  static const char* Dir() { return std::getenv("MDEVKIT_FUZZ_SEEDS"); }
  explicit SeedWriter(const char* dir) : dir_(dir) {}
  void Write(const std::string& name, const std::vector<uint8_t>& bytes) {
    std::string path = dir_ + "/" + name;
    FILE* f = std::fopen(path.c_str(), "wb");
    if (f == nullptr || std::fwrite(bytes.data(), 1, bytes.size(), f) != bytes.size()) {
      std::fprintf(stderr, "cannot write seed %s\n", path.c_str());
      std::exit(1);
    }
    std::fclose(f);
    count_++;
  }
  ~SeedWriter() { std::fprintf(stderr, "%d seeds written to %s\n", count_, dir_.c_str()); }

 private:
  std::string dir_;
  int count_ = 0;
};

}  // namespace mdevkit_fuzz
