// AF_UNIX message transport with fd passing (SCM_RIGHTS), free of N-API so native hot-path code
// (the vfio-user message loop) can call it directly. The JS bindings in unix_socket.cc use it too.
#pragma once

#include <sys/types.h>
#include <sys/uio.h>

namespace mdevkit {

// The kernel's SCM_MAX_FD: the most fds one sendmsg() may carry.
constexpr int kMaxFdsPerMessage = 253;

// The most iovecs one sendmsg()/recvmsg() accepts (IOV_MAX / UIO_MAXIOV on Linux).
constexpr int kMaxIovecs = 1024;

// Sends the gathered bytes of iov[0..iovcnt) with fds[0..nfds) attached as one SCM_RIGHTS
// message (nothing attached when nfds == 0). Uses MSG_NOSIGNAL, so a vanished peer is -EPIPE
// rather than SIGPIPE. On a stream socket the send may be short; the fds travel with the first
// byte sent, so the caller resends only the remaining bytes, without fds.
// Returns the bytes sent or -errno (-EAGAIN when a non-blocking socket is full; -EINVAL for
// nfds outside [0, kMaxFdsPerMessage], iovcnt outside [0, kMaxIovecs], or fds with no bytes to
// carry them). Retries EINTR unless retryEintr is false (then -EINTR: a signal woke the caller).
// `flags` adds MSG_* flags (MSG_DONTWAIT: never block, whatever the socket's O_NONBLOCK).
ssize_t SendWithFds(int fd, const iovec* iov, int iovcnt, const int* fds, int nfds, bool retryEintr = true, int flags = 0);

// Receives into iov[0..iovcnt) and up to maxFds (<= kMaxFdsPerMessage) passed fds, which arrive
// close-on-exec and are stored in fds[0..*nfds); the caller owns them. *fdsTruncated is set when
// the sender attached more fds than fit: the kernel closes the excess, and we close any it
// delivered beyond maxFds, so the message is incomplete and usually a protocol error.
// Returns the bytes received (0 = orderly EOF) or -errno (-EAGAIN when nothing is queued on a
// non-blocking socket). On error no fds are returned. Retries EINTR unless retryEintr is false.
// `flags` adds MSG_* flags, as for SendWithFds.
ssize_t RecvWithFds(int fd, const iovec* iov, int iovcnt, int* fds, int maxFds, int* nfds, bool* fdsTruncated, bool retryEintr = true,
                    int flags = 0);

}  // namespace mdevkit
