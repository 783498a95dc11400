// The byte streams of one vfio-user connection, free of N-API and sockets so that the fuzzers run
// the very code the server runs (native/fuzz/): the input stream — framing, msg_size checks,
// SCM_RIGHTS fds assigned to the message they came with, messages spliced out of the stream while
// a request of ours waits for its reply — and the output queue of replies. The connection
// (vfio_user_conn.cc) does the syscalls and the dispatch; these classes keep the bookkeeping.
//
// File descriptors: Linux delivers SCM_RIGHTS fds with the recvmsg() that reads the first byte of
// the sendmsg() they came with, and ends that recvmsg() after it. So the fds of one recvmsg()
// belong to the last message that *starts* in the bytes it returned.
#pragma once

#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <vector>

#include "vfio_user_wire.h"

namespace mdevkit {

// How the stream classes close fds they own and drop: close(2) in the server; a fuzzer passes a
// checker that proves every fd is closed exactly once.
using FdCloser = void (*)(int fd);
void CloseFd(int fd);

// Replies waiting to be sent, as one contiguous byte stream: no allocation per reply once the
// buffer has grown, and one iovec per send. A reply that carries fds is sent on its own, so its
// SCM_RIGHTS data arrives with its first byte and no other message's.
class OutQueue {
 public:
  explicit OutQueue(FdCloser close_fd = CloseFd) : close_fd_(close_fd) {}
  ~OutQueue() { Clear(); }
  OutQueue(const OutQueue&) = delete;
  OutQueue& operator=(const OutQueue&) = delete;

  bool empty() const { return sent_ == len_; }
  size_t size() const { return len_; }

  // Room for n more bytes at the end of the stream.
  uint8_t* Append(size_t n);
  // The message in [start, end) of the stream goes with these fds (owned from now on).
  void AttachFds(size_t start, size_t end, std::vector<int> fds) { marks_.push_back(Mark{start, end, std::move(fds)}); }
  // What to send next: the bytes up to the next reply with fds, or that reply alone with its fds.
  void Next(iovec* iov, const std::vector<int>** fds) const;
  // n bytes of what Next() gave were sent.
  void Consumed(size_t n);
  void Clear();

 private:
  struct Mark {
    size_t start;
    size_t end;
    std::vector<int> fds;
  };
  void CloseAll(std::vector<int>& fds);

  FdCloser close_fd_;
  std::unique_ptr<uint8_t[]> buf_;
  size_t cap_ = 0;
  size_t len_ = 0;
  size_t sent_ = 0;
  std::deque<Mark> marks_;
};

// Appends a reply to `req` (header, a[0..alen), b[0..blen)) that carries `fds` (owned from now on).
void QueueReply(OutQueue& out, const VfioUserHeader& req, const uint8_t* a, size_t alen, const uint8_t* b, size_t blen,
                std::vector<int> fds);
// Appends an error reply (header only). errno 0 with the Error flag reads as success to some
// clients (QEMU): a non-positive err is sent as EIO.
void QueueError(OutQueue& out, const VfioUserHeader& req, int err);

// Decodes a REGION_READ (command 9) or REGION_WRITE (10) payload; returns 0, EINVAL (too short,
// or a size that disagrees with count) or E2BIG (count above max_xfer).
int DecodeRegionAccess(uint16_t command, const uint8_t* payload, uint32_t len, uint32_t max_xfer, VfioUserRegionAccess* a);

// Whether the complete message at p is the reply to `req` (same id and command, reply type). If so,
// *err is its errno (0, or EIO for an out-of-range one) and `reply` its payload when it is no error.
bool MatchReply(const VfioUserHeader& req, const uint8_t* p, std::vector<uint8_t>* reply, int* err);

// A request being served whose reply has not been queued yet.
struct PendingReply {
  VfioUserHeader h;
  VfioUserRegionAccess access;  // REGION_WRITE: what its reply echoes
  bool write_access;
  bool replied;
};

// Before a request of ours goes out on the main stream: a VMM that serves our requests only when
// none of its own waits (QEMU) must not be waiting for anything that depends on it. Writes being
// served are answered now (their bytes are stored; side effects follow, as a posted write's
// would); a read or control request cannot be, so the request must fail: returns EDEADLK, having
// queued nothing. Otherwise returns 0; *early counts the replies queued.
int AnswerPendingWrites(std::vector<PendingReply>& pending, OutQueue& out, uint64_t* early);

// What the input stream hands its messages to (the connection's dispatch).
class VfioUserSink {
 public:
  // Closed or draining: no further message is taken.
  virtual bool Stopped() = 0;
  // The message header `h` has an impossible msg_size: the stream cannot be framed past it.
  virtual void OnBadSize(const VfioUserHeader& h) = 0;
  // One complete message. `fds` came with it (owned by the callee). `truncated`: more fds were
  // sent than could be received. `while_waiting`: served while a request of ours waits for its
  // reply (the message was copied out of the stream first, so the callee may read more input).
  virtual void OnMessage(const VfioUserHeader& h, const uint8_t* payload, uint32_t len, std::vector<int> fds, bool truncated,
                         bool while_waiting) = 0;
  // A reply nobody waits for (e.g. to a request that timed out) was dropped while scanning.
  virtual void OnLateReply() = 0;

 protected:
  ~VfioUserSink() = default;
};

// The receive buffer of one connection: room for one largest message plus a second arriving behind
// it. Positions in the stream (uint64) name messages across compactions; buffer indexes do not.
class VfioUserInput {
 public:
  explicit VfioUserInput(uint32_t max_message, FdCloser close_fd = CloseFd);
  ~VfioUserInput() { CloseFds(); }
  VfioUserInput(const VfioUserInput&) = delete;
  VfioUserInput& operator=(const VfioUserInput&) = delete;

  // ---- receiving
  // Where the next recvmsg() may write. False when the buffer is full; it is compacted first when
  // allowed — never while a dispatched message's payload is in use (a handler is on the stack).
  bool Room(bool may_compact, iovec* iov);
  // Records n bytes just received into Room() and the fds that came with them (owned from now on).
  // Returns 0, or EBADMSG when fds came with bytes in which no message starts (they are closed).
  int Received(size_t n, const int* fds, int nfds, bool truncated);

  // ---- framing
  enum Frame { kPartial, kComplete, kBadSize };
  // The message at buffer index `at`: its header (when 16 bytes are there) and whether it is whole.
  Frame PeekAt(size_t at, VfioUserHeader* h) const;

  // Hands every complete message from the read position to the sink, in order, until the sink
  // stops or the stream cannot be framed (then the sink's OnBadSize and nothing more).
  void Process(VfioUserSink& sink);

  // While a request of ours waits for its reply (`req`): scans the complete messages behind the
  // one being dispatched (if any). Late replies are dropped, client commands spliced out and handed
  // to the sink (while_waiting); the reply is spliced out into `reply`/`err`.
  enum Scan { kNeedMore, kFound, kUnframeable };
  Scan ScanForReply(const VfioUserHeader& req, VfioUserSink& sink, std::vector<uint8_t>* reply, int* err);

  // ---- the I/O thread's path (messages served in place, one at a time)
  // Whether fds wait for the message at buffer index `at` or an earlier one.
  bool FdsAtOrBefore(size_t at) const { return !fds_.empty() && fds_.front().pos <= base_ + at; }
  // The message at the read position was served.
  void Consume(size_t size) { start_ += size; }
  // Everything was consumed: start over at the buffer's beginning.
  void ResetIfDrained();

  // ---- state
  const uint8_t* data() const { return buf_.get(); }
  size_t start() const { return start_; }
  size_t end() const { return end_; }
  bool Full() const { return end_ == cap_; }
  bool HasPartial() const { return end_ > start_; }
  // No bytes and no fds buffered.
  bool Idle() const { return start_ == end_ && fds_.empty(); }
  // Stream position of the read position.
  uint64_t ReadPosition() const { return base_ + start_; }
  uint32_t max_message() const { return max_message_; }

  // Closes every fd held for messages not yet served.
  void CloseFds();
  // Frees the buffer (nothing more will be read); only when no handler uses a payload.
  void Release();

 private:
  struct FdBatch {
    uint64_t pos;
    std::vector<int> fds;
    bool truncated;
  };
  uint64_t LastMessageStartIn(uint64_t begin, uint64_t end) const;
  FdBatch* FindBatch(uint64_t pos);
  // The fds that came with the message at `pos`; batches for earlier positions are orphans (closed).
  std::vector<int> TakeFds(uint64_t pos, bool* truncated);
  void Compact();
  // Removes the message at buffer index `at` (size bytes) from the stream.
  void Splice(size_t at, size_t size);
  void CloseAll(std::vector<int>& fds);

  FdCloser close_fd_;
  uint32_t max_message_;
  std::unique_ptr<uint8_t[]> buf_;
  size_t cap_ = 0;
  size_t start_ = 0;
  size_t end_ = 0;
  size_t cur_end_ = 0;       // end of the message Process() is dispatching
  bool dispatching_ = false;  // Process() is inside the sink with the message at start_
  uint64_t base_ = 0;         // stream position of buffer index 0
  std::deque<FdBatch> fds_;
};

}  // namespace mdevkit
