// Fuzz target: the vfio-user connection's streams (core/vfio_user_stream.h) driven as the server
// drives them, by a peer that controls every byte and every fd it sends.
//
// The input is a script: SEND (bytes + fds into a model of the socket, which delivers them the way
// Linux's AF_UNIX recvmsg does), RECV (one receive + dispatch, as a loop wakeup does), FLUSH
// (a send of queued replies, partial or not), REQUEST (a DMA request of ours waiting for its reply while
// the peer's commands are served). Dispatch is the connection's: REGION_READ/WRITE decoded and
// served by a region map (with a JS stand-in that may itself issue a DMA request, as a doorbell
// does); other commands go to a control-plane stand-in that may reply with fds or issue a request.
//
// Checked against a model that frames the whole byte stream from its start:
// - every message reaches dispatch at most once, whole and in order (spliced ones included);
// - each message gets exactly the fds the kernel delivered with the recvmsg() that read its first
//   byte, and fds arriving where no message starts break the connection;
// - every fd is closed exactly once or handed on, and none is left at the end;
// - replies leave as a well-formed stream, a reply with fds alone in its send, and every
//   command that wants a reply gets exactly one.
#include <cerrno>
#include <deque>
#include <string>
#include <memory>
#include <vector>

#include "core/masked_storage.h"
#include "core/region_map.h"
#include "core/vfio_user_stream.h"
#include "fuzz_input.h"

using namespace mdevkit;
using mdevkit_fuzz::FdLedger;
using mdevkit_fuzz::FuzzInput;

namespace {

FdLedger g_fds;
void LedgerClose(int fd) { g_fds.Close(fd); }

constexpr uint16_t kDmaRead = 11;
constexpr uint16_t kDmaWrite = 12;

struct PendingSend {
  std::vector<uint8_t> bytes;
  std::vector<int> fds;
  size_t consumed = 0;
};

struct ModelMessage {
  uint64_t start;
  uint32_t size;  // 0 while the size field has not arrived
  std::vector<int> fds;
  bool truncated = false;
  bool consumed = false;
  bool delivered = false;
};

class Harness final : public VfioUserSink {
 public:
  Harness(FuzzInput& in) : in_(in) {
    uint8_t cfg = in_.U8();
    negotiated_ = (cfg & 1) != 0;
    static const uint32_t kXfer[] = {8, 64, 512, 4096};
    max_xfer_ = kXfer[(cfg >> 1) & 3];
    max_message_ = 16 + 16 + max_xfer_ + 64;
    max_fds_ = 1 + ((cfg >> 3) & 3);
    input_ = std::make_unique<VfioUserInput>(max_message_, LedgerClose);
    BuildRegions();
  }

  ~Harness() {
    // Teardown as the connection's: everything still held is closed.
    input_.reset();
    out_.Clear();
    for (PendingSend& s : socket_) {
      if (s.consumed == 0) {
        for (int fd : s.fds) g_fds.Close(fd);
      }
    }
    FUZZ_CHECK(g_fds.OpenCount() == 0);
  }

  void Run() {
    while (!in_.empty() && ops_ < 256) {
      ops_++;
      switch (in_.U8() % 8) {
        case 0:
        case 1:
          OpSend(1);
          break;
        case 2:
          // The same bytes sent again and again: streams larger than the receive buffer from a
          // short input, so that it fills, compacts and pushes back.
          OpSend(1 + in_.U8() % 32);
          break;
        case 3:
        case 4:
          OpRecv();
          break;
        case 5:
          Flush(1 + in_.U16());
          break;
        case 6:
          if (!Stopped()) Request(0);
          break;
        case 7:
          // A client that reads every reply at once: the server drains the socket.
          for (int i = 0; i < 64 && !Stopped() && !socket_.empty(); i++) {
            OpRecv();
            Flush(SIZE_MAX);
          }
          break;
      }
    }
    Flush(SIZE_MAX);
    // Every command that wants a reply got exactly one (unless the connection broke).
    if (!closed_ && replies_seen_ != replies_owed_) std::fprintf(stderr, "seen %llu owed %llu client %zu next %llu\n", (unsigned long long)replies_seen_, (unsigned long long)replies_owed_, client_.size(), (unsigned long long)next_reply_at_);
    if (!closed_) FUZZ_CHECK(replies_seen_ == replies_owed_);
  }

  // ---- VfioUserSink ---------------------------------------------------------------------------

  bool Stopped() override { return closed_ || draining_; }

  void OnBadSize(const VfioUserHeader& h) override {
    QueueError(out_, h, h.msg_size < sizeof(VfioUserHeader) ? EINVAL : E2BIG);
    replies_owed_++;
    draining_ = true;  // nothing more is taken
    Flush(SIZE_MAX);
  }

  void OnMessage(const VfioUserHeader& h, const uint8_t* payload, uint32_t len, std::vector<int> fds, bool truncated,
                 bool while_waiting) override {
    size_t idx = NextMessage(while_waiting);
    ModelMessage& m = model_[idx];
    // Whole, as sent, and with the fds that came with its first byte.
    FUZZ_CHECK(m.size == h.msg_size && len + sizeof h == m.size);
    FUZZ_CHECK(std::memcmp(stream_.data() + m.start, &h, sizeof h) == 0);
    FUZZ_CHECK(len == 0 || std::memcmp(stream_.data() + m.start + sizeof h, payload, len) == 0);
    FUZZ_CHECK(fds == m.fds);
    FUZZ_CHECK(truncated == m.truncated);
    m.consumed = m.delivered = true;
    if (getenv("FUZZ_TRACE")) std::fprintf(stderr, "msg idx %zu cmd %u flags %x size %u ww %d\n", idx, h.command, h.flags, h.msg_size, while_waiting);

    size_t saved = dispatching_;
    if (!while_waiting) dispatching_ = idx;
    uint32_t type = h.flags & kVfioUserTypeMask;
    bool no_reply = (h.flags & kVfioUserNoReply) != 0;
    // Truncated fds are refused before the type is looked at.
    if ((truncated || type != kVfioUserTypeReply) && !no_reply) replies_owed_++;
    if (truncated) {
      for (int fd : fds) g_fds.Close(fd);
      if (!no_reply) QueueError(out_, h, EINVAL);
    } else {
      Dispatch(h, payload, len, std::move(fds));
    }
    dispatching_ = saved;
    if (while_waiting) Flush(SIZE_MAX);
  }

  void OnLateReply() override {
    size_t idx = NextMessage(true);
    FUZZ_CHECK((Header(idx).flags & kVfioUserTypeMask) == kVfioUserTypeReply);
    model_[idx].consumed = true;
  }

 private:
  // ---- the socket and the model of the stream -------------------------------------------------

  void OpSend(size_t times) {
    size_t len = in_.U16() % 1024;
    size_t nfds = in_.U8() % 5;
    size_t got = 0;
    const uint8_t* b = in_.Bytes(len, &got);
    if (got == 0) return;  // a send of nothing carries no fds either
    for (size_t t = 0; t < times && stream_.size() < (1u << 18); t++) {
      PendingSend s;
      s.bytes.assign(b, b + got);
      for (size_t i = 0; i < nfds; i++) s.fds.push_back(g_fds.Open());
      stream_.insert(stream_.end(), b, b + got);
      socket_.push_back(std::move(s));
    }
    ExtendModel();
  }

  // Message starts, found by framing the stream from its first byte.
  void ExtendModel() {
    for (;;) {
      if (model_broken_) return;
      if (!model_.empty() && model_.back().size == 0) {
        ModelMessage& last = model_.back();
        if (stream_.size() < last.start + 8) return;
        uint32_t size;
        std::memcpy(&size, stream_.data() + last.start + 4, 4);
        if (size < sizeof(VfioUserHeader) || size > max_message_) {
          // Past an impossible size nothing can be framed (the server stops there too).
          model_broken_ = true;
          broken_at_ = last.start;
          return;
        }
        last.size = size;
      }
      uint64_t next = model_.empty() ? 0 : model_.back().start + model_.back().size;
      if (next >= stream_.size()) return;
      model_.push_back(ModelMessage{next, 0, {}, false, false, false});
    }
  }

  // Linux's AF_UNIX stream recvmsg(): reads across sends without fds; the fds of a send come with
  // the call that reads its first byte, which then ends after that send; a send with fds is
  // never read by a call that already read bytes of an earlier send.
  ssize_t SocketRecv(uint8_t* dst, size_t room, int* fds, int* nfds, bool* truncated) {
    *nfds = 0;
    *truncated = false;
    if (socket_.empty()) return -EAGAIN;
    size_t done = 0;
    while (done < room && !socket_.empty()) {
      PendingSend& s = socket_.front();
      bool first = s.consumed == 0;
      if (first && !s.fds.empty() && done > 0) break;
      size_t n = std::min(room - done, s.bytes.size() - s.consumed);
      std::memcpy(dst + done, s.bytes.data() + s.consumed, n);
      done += n;
      s.consumed += n;
      bool had_fds = first && !s.fds.empty();
      if (had_fds) {
        for (size_t i = 0; i < s.fds.size(); i++) {
          if (static_cast<int>(i) < max_fds_) fds[(*nfds)++] = s.fds[i];
          else g_fds.Close(s.fds[i]);  // the kernel closes what does not fit
        }
        *truncated = static_cast<int>(s.fds.size()) > max_fds_;
      }
      if (s.consumed == s.bytes.size()) socket_.pop_front();
      if (had_fds) break;
    }
    return static_cast<ssize_t>(done);
  }

  // One ReceiveOnce() of the connection; returns 0, EAGAIN, or an errno that ends the connection.
  int ReceiveOnce(bool may_compact) {
    iovec iov;
    if (!input_->Room(may_compact, &iov)) return EAGAIN;
    int fds[8];
    int nfds = 0;
    bool truncated = false;
    ssize_t n = SocketRecv(static_cast<uint8_t*>(iov.iov_base), iov.iov_len, fds, &nfds, &truncated);
    if (n < 0) return static_cast<int>(-n);
    uint64_t a = received_;
    received_ += static_cast<uint64_t>(n);
    // The model's owner: the last message starting in [a, received_).
    long owner = -1;
    // Past an impossible size the server frames nothing, and the model knows nothing either.
    bool known = !model_broken_ || received_ < broken_at_ + 8;
    for (size_t i = 0; i < model_.size() && model_[i].start < received_; i++) {
      if (model_[i].start >= a) owner = static_cast<long>(i);
    }
    std::vector<int> got(fds, fds + nfds);
    int r = input_->Received(static_cast<size_t>(n), fds, nfds, truncated);
    if (nfds == 0 && !truncated) {
      FUZZ_CHECK(r == 0);
      return 0;
    }
    if (known) FUZZ_CHECK((r == EBADMSG) == (owner < 0));
    if (r != 0) {
      for (int fd : got) FUZZ_CHECK(!g_fds.IsOpen(fd));
      return r;
    }
    if (known && owner >= 0) {
      ModelMessage& m = model_[static_cast<size_t>(owner)];
      m.fds.insert(m.fds.end(), got.begin(), got.end());
      m.truncated = m.truncated || truncated;
    }
    return 0;
  }

  void OpRecv() {
    // Backpressure: while replies are queued the connection reads no requests.
    if (Stopped() || !out_.empty()) return;
    int r = ReceiveOnce(nesting_ == 0);
    if (r != 0 && r != EAGAIN) {
      closed_ = true;
      return;
    }
    input_->Process(*this);
  }

  // The first message not yet consumed, behind the one being dispatched when `behind` is set and
  // a dispatch is on.
  size_t NextMessage(bool behind) {
    size_t from = behind && dispatching_ != SIZE_MAX ? dispatching_ + 1 : 0;
    for (size_t i = from; i < model_.size(); i++) {
      if (!model_[i].consumed) {
        FUZZ_CHECK(model_[i].size != 0 && model_[i].start + model_[i].size <= received_);
        return i;
      }
    }
    FUZZ_CHECK(false && "a message the model does not have was dispatched");
    return 0;
  }

  VfioUserHeader Header(size_t idx) const {
    VfioUserHeader h;
    std::memcpy(&h, stream_.data() + model_[idx].start, sizeof h);
    return h;
  }

  // ---- dispatch, as the connection's ------------------------------------------------------------

  void Dispatch(const VfioUserHeader& h, const uint8_t* payload, uint32_t len, std::vector<int> fds) {
    uint32_t type = h.flags & kVfioUserTypeMask;
    bool no_reply = (h.flags & kVfioUserNoReply) != 0;
    if (type == kVfioUserTypeReply) {
      for (int fd : fds) g_fds.Close(fd);
      return;
    }
    if (type != kVfioUserTypeCommand) {
      for (int fd : fds) g_fds.Close(fd);
      if (!no_reply) QueueError(out_, h, EINVAL);
      return;
    }
    if (negotiated_ && (h.command == kVfioUserRegionRead || h.command == kVfioUserRegionWrite)) {
      int err = fds.empty() ? RegionAccess(h, payload, len, no_reply) : EINVAL;
      for (int fd : fds) g_fds.Close(fd);
      if (err != 0 && !no_reply) QueueError(out_, h, err);
      return;
    }
    // The control plane: it owns the fds; it may need the VMM (a request) and reply with fds.
    for (int fd : fds) g_fds.Close(fd);
    uint8_t act = len > 0 ? payload[0] : 0;
    size_t slot = pending_.size();
    if (!no_reply) pending_.push_back(PendingReply{h, {}, false, false});
    nesting_++;
    if ((act & 1) && depth_ < 3) Request(act >> 4);
    nesting_--;
    if (!no_reply) pending_.resize(slot);
    if (closed_ || no_reply) return;
    if (act & 2) {
      QueueError(out_, h, act >> 4);
    } else {
      std::vector<int> reply_fds;
      if (act & 4) reply_fds = {g_fds.Open(), g_fds.Open()};
      QueueReply(out_, h, payload, std::min<uint32_t>(len, 8), nullptr, 0, std::move(reply_fds));
    }
  }

  int RegionAccess(const VfioUserHeader& h, const uint8_t* payload, uint32_t len, bool no_reply) {
    VfioUserRegionAccess a;
    int bad = DecodeRegionAccess(h.command, payload, len, max_xfer_, &a);
    // The decoder's rules, restated.
    uint64_t want = 16 + (h.command == kVfioUserRegionWrite && len >= 16 ? std::min<uint64_t>(a.count, ~0u) : 0);
    if (len < 16) FUZZ_CHECK(bad == EINVAL);
    else if (a.count > max_xfer_) FUZZ_CHECK(bad == E2BIG);
    else FUZZ_CHECK((bad == 0) == (len == want));
    if (bad != 0) return bad;
    bool write = h.command == kVfioUserRegionWrite;
    std::vector<uint8_t> buf(a.count);
    if (write && a.count) std::memcpy(buf.data(), payload + sizeof a, a.count);
    size_t slot = pending_.size();
    if (!no_reply) pending_.push_back(PendingReply{h, a, write, false});
    nesting_++;
    int r = map_.AccessNative(a.region, a.offset, buf.data(), a.count, write);
    if (r == RegionMap::kNeedsJs) r = JsAccess(a, buf.data(), write);
    nesting_--;
    bool replied = false;
    if (!no_reply) {
      replied = pending_[slot].replied;
      pending_.resize(slot);
    }
    if (replied) return 0;  // answered early, before its handler needed the VMM
    if (r != 0) return r;
    if (!no_reply) QueueReply(out_, h, reinterpret_cast<const uint8_t*>(&a), sizeof a, write ? nullptr : buf.data(), write ? 0 : a.count, {});
    return 0;
  }

  // A hooked register: a doorbell may need the VMM (DMA through messages).
  int JsAccess(const VfioUserRegionAccess& a, uint8_t* buf, bool write) {
    if (!write) {
      std::memset(buf, 0x5a, a.count);
      return 0;
    }
    if (a.count > 0 && (buf[0] & 1) && depth_ < 3) Request(buf[0] >> 4);
    return a.count > 0 && (buf[0] & 2) ? EIO : 0;
  }

  // A request of ours (DMA_READ/DMA_WRITE) on the main stream, waiting for its reply while the
  // client's commands are served: DoRequest + AwaitReplyInline.
  void Request(uint8_t kind) {
    depth_++;
    VfioUserHeader req{next_request_id_++, static_cast<uint16_t>(kind & 1 ? kDmaWrite : kDmaRead), 16, kVfioUserTypeCommand, 0};
    uint64_t early = 0;
    if (AnswerPendingWrites(pending_, out_, &early) != 0) {
      depth_--;
      return;  // EDEADLK: a read or control request waits for us
    }
    Flush(SIZE_MAX);  // queued replies go out before the request
    nesting_++;
    for (int spins = 0; spins < 64; spins++) {
      if (Stopped()) break;
      std::vector<uint8_t> reply;
      int err = 0;
      VfioUserInput::Scan scan = input_->ScanForReply(req, *this, &reply, &err);
      if (scan == VfioUserInput::kUnframeable) break;
      if (scan == VfioUserInput::kFound) {
        size_t idx = NextMessage(true);
        VfioUserHeader h = Header(idx);
        FUZZ_CHECK((h.flags & kVfioUserTypeMask) == kVfioUserTypeReply && h.msg_id == req.msg_id && h.command == req.command);
        if (!(h.flags & kVfioUserError)) {
          FUZZ_CHECK(reply.size() + 16 == h.msg_size);
          FUZZ_CHECK(reply.empty() || std::memcmp(reply.data(), stream_.data() + model_[idx].start + 16, reply.size()) == 0);
        }
        model_[idx].consumed = true;
        break;
      }
      if (Stopped()) break;
      int r = ReceiveOnce(false);
      if (r == EAGAIN) {
        if (socket_.empty() || input_->Full()) break;  // ETIMEDOUT / ENOBUFS
        continue;
      }
      if (r != 0) {
        closed_ = true;
        break;
      }
    }
    nesting_--;
    depth_--;
  }

  // ---- replies to the client ------------------------------------------------------------------

  // Sends up to `budget` bytes of queued replies, as the client would receive them.
  void Flush(size_t budget) {
    while (budget > 0 && !out_.empty()) {
      iovec iov;
      const std::vector<int>* fds = nullptr;
      out_.Next(&iov, &fds);
      FUZZ_CHECK(iov.iov_len > 0);
      size_t k = std::min<size_t>(iov.iov_len, budget);
      const uint8_t* p = static_cast<const uint8_t*>(iov.iov_base);
      if (fds != nullptr) {
        // A reply with fds starts a send of its own and is all of it.
        FUZZ_CHECK(client_.size() == next_reply_at_);
        uint32_t size;
        std::memcpy(&size, p + 4, 4);
        FUZZ_CHECK(iov.iov_len == size && !fds->empty());
        for (int fd : *fds) FUZZ_CHECK(g_fds.IsOpen(fd));
      }
      client_.insert(client_.end(), p, p + k);
      out_.Consumed(k);
      budget -= k;
      ParseReplies();
    }
  }

  void ParseReplies() {
    while (client_.size() >= next_reply_at_ + 16) {
      VfioUserHeader h;
      std::memcpy(&h, client_.data() + next_reply_at_, sizeof h);
      FUZZ_CHECK((h.flags & kVfioUserTypeMask) == kVfioUserTypeReply && h.msg_size >= 16);
      if (h.flags & kVfioUserError) FUZZ_CHECK(h.msg_size == 16 && h.error != 0);
      if (client_.size() < next_reply_at_ + h.msg_size) return;
      next_reply_at_ += h.msg_size;
      replies_seen_++;
      if (getenv("FUZZ_TRACE")) std::fprintf(stderr, "reply cmd %u flags %x err %u size %u\n", h.command, h.flags, h.error, h.msg_size);
    }
  }

  // ---- the device's regions -------------------------------------------------------------------

  // Region 0: registers (masked storage, one hooked register, a JS doorbell segment); region 2:
  // RAM; region 7: config space (masked, no hooks); region 1: unimplemented (zero).
  void BuildRegions() {
    regs_.assign(64 * kPlaneCount, 0);
    for (size_t i = 0; i < 64; i++) {
      regs_[kPlaneWritable * 64 + i] = 0xff;
      regs_[kPlaneFlags * 64 + i] = kByteMapped | (i >= 8 && i < 12 ? kByteReadHook | kByteWriteHook : 0);
    }
    ram_.assign(256, 0);
    config_.assign(256 * kPlaneCount, 0);
    for (size_t i = 0; i < 256; i++) config_[kPlaneWritable * 256 + i] = static_cast<uint8_t>(i & 0x3c ? 0xff : 0);
    RegionEntry bar0{128, true, true, {}};
    bar0.segments.push_back(RegionSegment{0, 64, RegionSegment::kMasked, regs_.data(), 64, 0});
    bar0.segments.push_back(RegionSegment{64, 32, RegionSegment::kJs, nullptr, 0, 0});
    map_.Set(0, bar0);
    map_.Set(1, RegionEntry{4096, true, true, {RegionSegment{0, 4096, RegionSegment::kZero, nullptr, 0, 0}}});
    map_.Set(2, RegionEntry{256, true, true, {RegionSegment{0, 256, RegionSegment::kRam, ram_.data(), 0, 0}}});
    map_.Set(7, RegionEntry{256, true, true, {RegionSegment{0, 256, RegionSegment::kMasked, config_.data(), 256, 0}}});
  }

  FuzzInput& in_;
  bool negotiated_ = false;
  uint32_t max_xfer_ = 0;
  uint32_t max_message_ = 0;
  int max_fds_ = 1;
  std::unique_ptr<VfioUserInput> input_;
  OutQueue out_{LedgerClose};
  RegionMap map_;
  std::vector<uint8_t> regs_, ram_, config_;
  std::vector<PendingReply> pending_;
  std::deque<PendingSend> socket_;
  std::vector<uint8_t> stream_;  // every byte sent, from the first
  uint64_t received_ = 0;        // how much of it the server has received
  std::vector<ModelMessage> model_;
  bool model_broken_ = false;
  uint64_t broken_at_ = 0;
  size_t dispatching_ = SIZE_MAX;  // model index of the message Process() is dispatching
  std::vector<uint8_t> client_;    // every reply byte the client received
  uint64_t next_reply_at_ = 0;
  uint64_t replies_seen_ = 0;
  uint64_t replies_owed_ = 0;
  bool closed_ = false;    // the connection broke: nothing more is sent or read
  bool draining_ = false;  // an orderly end: what was dispatched is answered, nothing more is taken
  int nesting_ = 0;
  int depth_ = 0;
  int ops_ = 0;
  uint16_t next_request_id_ = 1;
};

// ---- seeds: sessions of valid vfio-user messages ------------------------------------------------

using mdevkit_fuzz::Script;

std::vector<uint8_t> Msg(uint16_t id, uint16_t command, uint32_t flags, const Script& payload) {
  const std::vector<uint8_t>& p = payload.bytes();
  VfioUserHeader h{id, command, static_cast<uint32_t>(16 + p.size()), flags, 0};
  Script m;
  m.Bytes(&h, sizeof h).Bytes(p);
  return m.bytes();
}

Script RegionAccess(uint32_t region, uint64_t offset, uint32_t count, const std::vector<uint8_t>& data = {}) {
  Script s;
  s.U64(offset).U32(region).U32(count).Bytes(data);
  return s;
}

// One request after another, each answered before the next is sent (as QEMU's vCPUs do).
std::vector<std::vector<uint8_t>> Session() {
  std::string caps =
      "{\"capabilities\":{\"max_msg_fds\":8,\"max_data_xfer_size\":1048576,\"pgsizes\":4096,"
      "\"max_dma_maps\":65535,\"write_multiple\":true,\"twin_socket\":{\"supported\":false}}}";
  Script version;
  version.U16(0).U16(0).Bytes(caps.data(), caps.size() + 1);
  std::vector<std::vector<uint8_t>> m;
  uint16_t id = 0x100;
  m.push_back(Msg(id++, 1, 0, version));
  m.push_back(Msg(id++, 2, 0, Script().U32(32).U32(3).U64(0).U64(0x100000).U64(0x10000)));       // DMA_MAP (fd)
  m.push_back(Msg(id++, 4, 0, Script().U32(16).U32(0).U32(0).U32(0)));                           // DEVICE_GET_INFO
  m.push_back(Msg(id++, 5, 0, Script().U32(32).U32(0).U32(2).U32(0).U64(0).U64(0)));             // GET_REGION_INFO
  m.push_back(Msg(id++, 7, 0, Script().U32(16).U32(0).U32(2).U32(0)));                           // GET_IRQ_INFO
  m.push_back(Msg(id++, 8, 0, Script().U32(28).U32(0x24).U32(2).U32(0).U32(2)));                 // SET_IRQS (2 fds)
  m.push_back(Msg(id++, 9, 0, RegionAccess(0, 0, 4)));                                           // BAR0 register
  m.push_back(Msg(id++, 10, 0, RegionAccess(0, 4, 4, {1, 2, 3, 4})));
  m.push_back(Msg(id++, 10, 0, RegionAccess(0, 8, 4, {5, 6, 7, 8})));                            // hooked register
  m.push_back(Msg(id++, 9, 0, RegionAccess(7, 0, 4)));                                           // config space
  m.push_back(Msg(id++, 10, 0, RegionAccess(7, 4, 2, {6, 1})));
  m.push_back(Msg(id++, 10, 0, RegionAccess(2, 16, 8, {1, 2, 3, 4, 5, 6, 7, 8})));                // RAM
  m.push_back(Msg(id++, 9, 0, RegionAccess(2, 16, 8)));
  m.push_back(Msg(id++, 9, 0, RegionAccess(1, 0x100, 4)));                                       // unimplemented
  m.push_back(Msg(id++, 10, kVfioUserNoReply, RegionAccess(0, 0x10, 4, {9, 9, 9, 9})));           // posted write
  m.push_back(Msg(id++, 15, 0, Script().U64(2).U64(0).U32(0).U32(4).U64(1).U64(4).U32(0).U32(4).U64(2)));  // WRITE_MULTI
  m.push_back(Msg(id++, 16, 0, Script().U32(40).U32(0x20006).U64(4096).U32(1).U32(0).U64(0x100000).U64(0x10000)));  // LOGGING_START
  m.push_back(Msg(id++, 16, 0, Script().U32(40).U32(0x10008).U64(0x100000).U64(0x10000).U64(4096)));                // LOGGING_REPORT
  m.push_back(Msg(id++, 17, 0, Script().U32(8).U32(64)));                                        // MIG_DATA_READ
  m.push_back(Msg(id++, 3, 0, Script().U32(24).U32(0).U64(0x100000).U64(0x10000)));             // DMA_UNMAP
  m.push_back(Msg(id++, 13, 0, Script()));                                                       // DEVICE_RESET
  return m;
}

size_t FdsFor(const std::vector<uint8_t>& msg) {
  uint16_t command;
  std::memcpy(&command, msg.data() + 2, 2);
  return command == 2 ? 1 : command == 8 ? 2 : 0;
}

void Send(Script& s, const std::vector<uint8_t>& bytes, size_t fds) {
  s.U8(0).U16(static_cast<uint16_t>(bytes.size())).U8(static_cast<uint8_t>(fds)).Bytes(bytes);
}

// The reply a client sends to our DMA_READ (msg_id id), in the spec's layout or QEMU's.
std::vector<uint8_t> DmaReadReply(uint16_t id, bool qemu) {
  Script p;
  if (qemu) p.U64(0x100000).U32(4).U32(0xdeadbeef).U32(0);
  else p.U64(0x100000).U64(4).U32(0xdeadbeef);
  return Msg(id, kDmaRead, kVfioUserTypeReply, p);
}

void WriteSeeds(const char* dir) {
  mdevkit_fuzz::SeedWriter w(dir);
  const uint8_t cfg = 1 | (3 << 1) | (1 << 3);  // negotiated, 4 KiB transfers, 2 fds per message
  std::vector<std::vector<uint8_t>> session = Session();
  {
    Script s;
    s.U8(cfg);
    for (const auto& m : session) {
      Send(s, m, FdsFor(m));
      s.U8(3).U8(5).U16(0xffff);
    }
    w.Write("session", s.bytes());
  }
  {
    // Everything pipelined into one send (no fds), then read in turns.
    Script s;
    s.U8(cfg);
    std::vector<uint8_t> all;
    for (const auto& m : session) {
      if (FdsFor(m) == 0) all.insert(all.end(), m.begin(), m.end());
    }
    Send(s, all, 0);
    for (int i = 0; i < 24; i++) s.U8(3).U8(5).U16(0xffff);
    w.Write("pipelined", s.bytes());
  }
  {
    // Each message on its own, then the server drains the socket.
    Script s;
    s.U8(cfg);
    for (size_t i = 0; i < 8; i++) Send(s, session[i], FdsFor(session[i]));
    s.U8(7).U8(5).U16(0xffff).U8(7).U8(5).U16(0xffff);
    w.Write("queued", s.bytes());
  }
  for (int qemu = 0; qemu < 2; qemu++) {
    // A DMA_READ of ours answered while a client command waits in front of the reply.
    Script s;
    s.U8(cfg);
    Send(s, session[6], 0);
    Send(s, DmaReadReply(1, qemu), 0);
    s.U8(6).U8(5).U16(0xffff).U8(3).U8(5).U16(0xffff);
    w.Write(qemu ? "request-qemu-layout" : "request-spec-layout", s.bytes());
  }
  {
    // A doorbell whose handler needs the VMM (DMA through messages), served while it waits.
    Script s;
    s.U8(cfg);
    Send(s, Msg(0x200, 10, 0, RegionAccess(0, 64, 4, {0x01, 0, 0, 0})), 0);
    Send(s, session[6], 0);
    Send(s, DmaReadReply(1, true), 0);
    s.U8(3).U8(5).U16(0xffff).U8(3).U8(5).U16(0xffff);
    w.Write("doorbell-dma", s.bytes());
  }
  {
    // The reply to our request comes with an fd: it must not pass to the message behind it.
    Script s;
    s.U8(cfg);
    Send(s, DmaReadReply(1, false), 1);
    Send(s, session[1], 1);
    s.U8(6).U8(3).U8(5).U16(0xffff).U8(3).U8(5).U16(0xffff);
    w.Write("reply-with-fd", s.bytes());
  }
  {
    // A message split over sends, its fds with the first part.
    Script s;
    s.U8(cfg);
    const std::vector<uint8_t>& m = session[5];
    Send(s, std::vector<uint8_t>(m.begin(), m.begin() + 10), 2);
    Send(s, std::vector<uint8_t>(m.begin() + 10, m.end()), 0);
    s.U8(3).U8(3).U8(5).U16(0xffff);
    w.Write("split-with-fds", s.bytes());
  }
  {
    // A control command whose handler issues a request, replies with fds.
    Script s;
    s.U8(cfg);
    Send(s, Msg(0x300, 6, 0, Script().U32(0x05).U32(0).U32(0).U32(0)), 0);
    Send(s, DmaReadReply(1, false), 0);
    s.U8(3).U8(5).U16(0xffff);
    w.Write("control-request-fds", s.bytes());
  }
  {
    // Small transfers (a 4304-byte buffer): 96 pipelined reads and part of a 97th arrive in one
    // receive, so the buffer compacts behind them.
    Script s;
    s.U8(1 | (1 << 3));
    std::vector<uint8_t> read = Msg(0x500, 9, 0, RegionAccess(0, 0, 4));
    for (int i = 0; i < 3; i++) s.U8(2).U8(31).U16(static_cast<uint16_t>(read.size())).U8(0).Bytes(read);
    Send(s, std::vector<uint8_t>(read.begin(), read.begin() + 20), 0);
    s.U8(3).U8(5).U16(0xffff).U8(7);
    w.Write("compaction", s.bytes());
  }
  {
    // An impossible msg_size: an error reply, then nothing more.
    Script s;
    s.U8(cfg);
    Send(s, Msg(0x400, 4, 0, Script().U32(16).U32(0).U32(0).U32(0)), 0);
    std::vector<uint8_t> bad = Msg(0x401, 4, 0, Script().U32(16));
    bad[4] = 8;
    Send(s, bad, 0);
    s.U8(3).U8(5).U16(0xffff);
    w.Write("bad-size", s.bytes());
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  if (const char* dir = mdevkit_fuzz::SeedWriter::Dir()) {
    WriteSeeds(dir);
    std::exit(0);
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  g_fds.Reset();
  FuzzInput in(data, size);
  Harness h(in);
  h.Run();
  return 0;
}
