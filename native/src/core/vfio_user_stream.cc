#include "core/vfio_user_stream.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace mdevkit {

void CloseFd(int fd) { ::close(fd); }

// ---- OutQueue ---------------------------------------------------------------------------------

uint8_t* OutQueue::Append(size_t n) {
  if (sent_ == len_) sent_ = len_ = 0;
  if (len_ + n > cap_) {
    size_t live = len_ - sent_;
    size_t cap = std::max<size_t>({cap_ * 2, live + n, 4096});
    std::unique_ptr<uint8_t[]> grown(new uint8_t[cap]);
    if (live) std::memcpy(grown.get(), buf_.get() + sent_, live);
    for (Mark& m : marks_) m.start -= sent_, m.end -= sent_;
    buf_ = std::move(grown);
    cap_ = cap;
    len_ = live;
    sent_ = 0;
  }
  uint8_t* p = buf_.get() + len_;
  len_ += n;
  return p;
}

void OutQueue::Next(iovec* iov, const std::vector<int>** fds) const {
  *fds = nullptr;
  size_t end = len_;
  if (!marks_.empty()) {
    const Mark& m = marks_.front();
    if (m.start == sent_) {
      end = m.end;
      *fds = &m.fds;
    } else {
      end = m.start;
    }
  }
  iov->iov_base = buf_.get() + sent_;
  iov->iov_len = end - sent_;
}

void OutQueue::Consumed(size_t n) {
  sent_ += n;
  // fds travel with the first byte of their message.
  while (!marks_.empty() && marks_.front().start < sent_) {
    CloseAll(marks_.front().fds);
    marks_.pop_front();
  }
  if (sent_ == len_) sent_ = len_ = 0;
}

void OutQueue::Clear() {
  for (Mark& m : marks_) CloseAll(m.fds);
  marks_.clear();
  sent_ = len_ = 0;
}

void OutQueue::CloseAll(std::vector<int>& fds) {
  for (int fd : fds) close_fd_(fd);
  fds.clear();
}

void QueueReply(OutQueue& out, const VfioUserHeader& req, const uint8_t* a, size_t alen, const uint8_t* b, size_t blen,
                std::vector<int> fds) {
  VfioUserHeader h{req.msg_id, req.command, static_cast<uint32_t>(sizeof(VfioUserHeader) + alen + blen), kVfioUserTypeReply, 0};
  size_t start = out.size();
  uint8_t* p = out.Append(h.msg_size);
  std::memcpy(p, &h, sizeof h);
  if (alen) std::memcpy(p + sizeof h, a, alen);
  if (blen) std::memcpy(p + sizeof h + alen, b, blen);
  if (!fds.empty()) out.AttachFds(start, start + h.msg_size, std::move(fds));
}

void QueueError(OutQueue& out, const VfioUserHeader& req, int err) {
  VfioUserHeader h{req.msg_id, req.command, sizeof(VfioUserHeader), kVfioUserTypeReply | kVfioUserError,
                   static_cast<uint32_t>(err > 0 ? err : EIO)};
  std::memcpy(out.Append(sizeof h), &h, sizeof h);
}

int DecodeRegionAccess(uint16_t command, const uint8_t* payload, uint32_t len, uint32_t max_xfer, VfioUserRegionAccess* a) {
  if (len < sizeof(VfioUserRegionAccess)) return EINVAL;
  std::memcpy(a, payload, sizeof *a);
  if (a->count > max_xfer) return E2BIG;
  size_t data = command == kVfioUserRegionWrite ? a->count : 0;
  return len == sizeof *a + data ? 0 : EINVAL;
}

bool MatchReply(const VfioUserHeader& req, const uint8_t* p, std::vector<uint8_t>* reply, int* err) {
  VfioUserHeader h;
  std::memcpy(&h, p, sizeof h);
  if ((h.flags & kVfioUserTypeMask) != kVfioUserTypeReply || h.msg_id != req.msg_id || h.command != req.command) return false;
  if (h.flags & kVfioUserError) {
    *err = h.error > 0 && h.error < 4096 ? static_cast<int>(h.error) : EIO;
  } else {
    *err = 0;
    reply->assign(p + sizeof h, p + h.msg_size);
  }
  return true;
}

int AnswerPendingWrites(std::vector<PendingReply>& pending, OutQueue& out, uint64_t* early) {
  *early = 0;
  for (const PendingReply& p : pending) {
    if (!p.replied && !p.write_access) return EDEADLK;
  }
  for (PendingReply& p : pending) {
    if (p.replied) continue;
    QueueReply(out, p.h, reinterpret_cast<const uint8_t*>(&p.access), sizeof p.access, nullptr, 0, {});
    p.replied = true;
    ++*early;
  }
  return 0;
}

// ---- VfioUserInput ----------------------------------------------------------------------------

VfioUserInput::VfioUserInput(uint32_t max_message, FdCloser close_fd)
    : close_fd_(close_fd), max_message_(max_message), cap_(static_cast<size_t>(max_message) * 2 + 4096) {
  buf_.reset(new uint8_t[cap_]);
}

bool VfioUserInput::Room(bool may_compact, iovec* iov) {
  if (end_ == cap_) {
    if (start_ == 0 || !may_compact) return false;
    Compact();
  }
  iov->iov_base = buf_.get() + end_;
  iov->iov_len = cap_ - end_;
  return true;
}

int VfioUserInput::Received(size_t n, const int* fds, int nfds, bool truncated) {
  uint64_t chunk_start = base_ + end_;
  end_ += n;
  if (nfds == 0 && !truncated) return 0;
  uint64_t owner = LastMessageStartIn(chunk_start, base_ + end_);
  if (owner == UINT64_MAX) {
    for (int i = 0; i < nfds; i++) close_fd_(fds[i]);
    return EBADMSG;  // fds that belong to no message: the peer is not speaking the protocol
  }
  FdBatch* batch = FindBatch(owner);
  if (batch == nullptr) {
    fds_.push_back(FdBatch{owner, {}, false});
    batch = &fds_.back();
  }
  batch->fds.insert(batch->fds.end(), fds, fds + nfds);
  batch->truncated = batch->truncated || truncated;
  return 0;
}

uint64_t VfioUserInput::LastMessageStartIn(uint64_t begin, uint64_t end) const {
  uint64_t s = base_ + start_;
  uint64_t last = UINT64_MAX;
  while (s < end) {
    if (s >= begin) last = s;
    size_t idx = static_cast<size_t>(s - base_);
    if (idx + 8 > end_) break;
    uint32_t size;
    std::memcpy(&size, buf_.get() + idx + 4, 4);
    if (size < sizeof(VfioUserHeader)) break;
    s += size;
  }
  return last;
}

VfioUserInput::FdBatch* VfioUserInput::FindBatch(uint64_t pos) {
  for (FdBatch& b : fds_) {
    if (b.pos == pos) return &b;
  }
  return nullptr;
}

std::vector<int> VfioUserInput::TakeFds(uint64_t pos, bool* truncated) {
  std::vector<int> result;
  *truncated = false;
  while (!fds_.empty() && fds_.front().pos <= pos) {
    FdBatch& b = fds_.front();
    if (b.pos == pos) {
      result = std::move(b.fds);
      *truncated = b.truncated;
    } else {
      CloseAll(b.fds);
    }
    fds_.pop_front();
  }
  return result;
}

VfioUserInput::Frame VfioUserInput::PeekAt(size_t at, VfioUserHeader* h) const {
  if (at > end_ || end_ - at < sizeof(VfioUserHeader)) return kPartial;
  std::memcpy(h, buf_.get() + at, sizeof *h);
  if (h->msg_size < sizeof(VfioUserHeader) || h->msg_size > max_message_) return kBadSize;
  return end_ - at < h->msg_size ? kPartial : kComplete;
}

void VfioUserInput::Process(VfioUserSink& sink) {
  while (!sink.Stopped()) {
    VfioUserHeader h;
    Frame f = PeekAt(start_, &h);
    if (f == kBadSize) {
      sink.OnBadSize(h);
      return;
    }
    if (f == kPartial) break;
    bool truncated = false;
    std::vector<int> fds = TakeFds(base_ + start_, &truncated);
    cur_end_ = start_ + h.msg_size;
    dispatching_ = true;
    sink.OnMessage(h, buf_.get() + start_ + sizeof h, h.msg_size - static_cast<uint32_t>(sizeof h), std::move(fds), truncated, false);
    dispatching_ = false;
    start_ = cur_end_;
  }
  if (start_ == end_) {
    base_ += start_;
    start_ = end_ = 0;
  } else if (start_ > cap_ / 2) {
    Compact();
  }
}

VfioUserInput::Scan VfioUserInput::ScanForReply(const VfioUserHeader& req, VfioUserSink& sink, std::vector<uint8_t>* reply, int* err) {
  // Inside a dispatch, the message being served is not ours to touch: scan past it.
  size_t s = dispatching_ ? cur_end_ : start_;
  while (!sink.Stopped()) {
    VfioUserHeader h;
    Frame f = PeekAt(s, &h);
    if (f == kBadSize) return kUnframeable;
    if (f == kPartial) break;
    bool truncated = false;
    if (MatchReply(req, buf_.get() + s, reply, err)) {
      // A reply carries no fds; any that came with it must not pass to the message behind it.
      std::vector<int> fds = TakeFds(base_ + s, &truncated);
      CloseAll(fds);
      Splice(s, h.msg_size);
      return kFound;
    }
    if ((h.flags & kVfioUserTypeMask) == kVfioUserTypeReply) {
      sink.OnLateReply();
      std::vector<int> fds = TakeFds(base_ + s, &truncated);
      CloseAll(fds);
      Splice(s, h.msg_size);
      continue;
    }
    // A client command: served now, from a copy, since serving it may read more input.
    std::vector<uint8_t> msg(buf_.get() + s, buf_.get() + s + h.msg_size);
    std::vector<int> fds = TakeFds(base_ + s, &truncated);
    Splice(s, h.msg_size);
    sink.OnMessage(h, msg.data() + sizeof h, h.msg_size - static_cast<uint32_t>(sizeof h), std::move(fds), truncated, true);
  }
  return kNeedMore;
}

void VfioUserInput::ResetIfDrained() {
  if (start_ != end_) return;
  base_ += start_;
  start_ = end_ = 0;
}

void VfioUserInput::Compact() {
  if (start_ == 0) return;
  std::memmove(buf_.get(), buf_.get() + start_, end_ - start_);
  base_ += start_;
  end_ -= start_;
  start_ = 0;
}

void VfioUserInput::Splice(size_t at, size_t size) {
  uint64_t pos = base_ + at;
  std::memmove(buf_.get() + at, buf_.get() + at + size, end_ - at - size);
  end_ -= size;
  for (FdBatch& b : fds_) {
    if (b.pos > pos) b.pos -= size;
  }
}

void VfioUserInput::CloseAll(std::vector<int>& fds) {
  for (int fd : fds) close_fd_(fd);
  fds.clear();
}

void VfioUserInput::CloseFds() {
  for (FdBatch& b : fds_) CloseAll(b.fds);
  fds_.clear();
}

void VfioUserInput::Release() {
  buf_.reset();
  cap_ = start_ = end_ = cur_end_ = 0;
}

}  // namespace mdevkit
