/**
 * AF_UNIX stream sockets with fd passing (SCM_RIGHTS): the transport of a vfio-user server,
 * which receives guest memory and eventfds from the VMM as fds attached to messages.
 *
 * Sockets are plain fds owned by the caller (close them with `closeFd`) and are created
 * close-on-exec and, by default, non-blocking; non-blocking calls return `null` instead of
 * throwing EAGAIN, so a caller waits for readiness with an `FdWatcher` and tries again.
 * Errors are errno errors (`code`, `errno`, `syscall`, plus `path` for bind/connect) or argument
 * errors naming the `field`.
 * @module
 */
import { binding } from './binding.js';
import { optionsRecord } from './options.js';

/** What {@link recvMsg} received. */
export interface ReceivedMessage {
  /** Bytes written into the buffer; 0 means the peer closed its end (EOF). */
  bytes: number;
  /** The fds that arrived with the message, close-on-exec; the caller owns (and must close) them. */
  fds: number[];
  /**
   * The peer attached more fds than `maxFds`: the excess were closed unseen, so the message is
   * incomplete. The fds in `fds` did arrive and still belong to the caller.
   */
  fdsTruncated: boolean;
}

/** The peer process of a connected UNIX socket, as the kernel recorded it at connect time. */
export interface PeerCredentials {
  /** Process id. */
  pid: number;
  /** Effective user id. */
  uid: number;
  /** Effective group id. */
  gid: number;
}

/** Which direction(s) {@link shutdownSocket} closes. */
export type ShutdownHow = 'read' | 'write' | 'both';

interface SocketBinding {
  socketPair(nonBlocking: boolean | undefined): [number, number];
  listenUnix(path: string, backlog: number, nonBlocking: boolean | undefined): number;
  acceptUnix(fd: number): number | null;
  connectUnix(path: string, nonBlocking: boolean | undefined): number;
  sendMsg(fd: number, data: Uint8Array | readonly Uint8Array[], fds: readonly number[] | undefined): number | null;
  recvMsg(fd: number, buf: Uint8Array, maxFds: number): ReceivedMessage | null;
  shutdownSocket(fd: number, how: ShutdownHow): void;
  peerCredentials(fd: number): PeerCredentials;
  socketRaw(domain: number, type: number, protocol: number): number;
  maxFdsPerMessage: number;
}

const native = binding as unknown as SocketBinding;

/** The most fds one message can carry (the kernel's SCM_MAX_FD, 253). */
export const MAX_FDS_PER_MESSAGE: number = native.maxFdsPerMessage;

/** Options for creating sockets. */
export interface SocketOptions {
  /** Create the socket(s) with O_NONBLOCK. Default `true`. */
  nonBlocking?: boolean;
}

/** Options of {@link listenUnix}. */
export interface ListenOptions extends SocketOptions {
  /** Pending-connection queue length passed to listen(). Default 16. */
  backlog?: number;
}

/**
 * Creates a connected pair of AF_UNIX stream sockets (socketpair).
 * @returns `[a, b]`: what is sent on one is received on the other
 */
export function socketPair(options?: SocketOptions): [number, number] {
  const { nonBlocking } = optionsRecord('options', options);
  return native.socketPair(nonBlocking);
}

/**
 * Creates a listening AF_UNIX stream socket bound to `path`. The socket file is created with
 * mode 0600 (further restricted by the umask): the mode is set on the socket before bind(), so
 * there is no moment at which another user could connect.
 * @param path a filesystem path shorter than 108 bytes (ENAMETOOLONG naming `path` otherwise);
 *   it must not exist yet (EADDRINUSE): remove a stale socket file first
 * @returns the listening fd; accept connections with {@link acceptUnix}
 */
export function listenUnix(path: string, options?: ListenOptions): number {
  const { backlog = 16, nonBlocking } = optionsRecord('options', options);
  return native.listenUnix(path, backlog, nonBlocking);
}

/**
 * Accepts one pending connection (accept4). The new socket is non-blocking and close-on-exec.
 * @returns the connected fd, or `null` when no connection is pending on a non-blocking listener
 */
export function acceptUnix(fd: number): number | null {
  return native.acceptUnix(fd);
}

/**
 * Connects to the AF_UNIX stream socket at `path`. AF_UNIX connections complete at once or fail:
 * ENOENT (no such socket), ECONNREFUSED (nobody listening), EAGAIN (non-blocking and the
 * listener's backlog is full; retry later).
 * @returns the connected fd
 */
export function connectUnix(path: string, options?: SocketOptions): number {
  const { nonBlocking } = optionsRecord('options', options);
  return native.connectUnix(path, nonBlocking);
}

/**
 * Sends one message: the bytes of `data` (an array is gathered in order, as with writev) and,
 * when `fds` is given, those fds as SCM_RIGHTS. The receiver gets duplicates; the caller still
 * owns (and may close) its own fds. Never raises SIGPIPE: a vanished peer is EPIPE.
 *
 * A stream socket may accept only part of the bytes. The fds travel with the first byte sent,
 * so after a short send, send the rest without fds.
 * @param data the payload; must not be empty when fds are attached (a stream socket cannot carry
 *   fds without data)
 * @param fds at most {@link MAX_FDS_PER_MESSAGE} fds
 * @returns bytes sent, or `null` when a non-blocking socket's buffer is full (EAGAIN)
 */
export function sendMsg(fd: number, data: Uint8Array | readonly Uint8Array[], fds?: readonly number[]): number | null {
  return native.sendMsg(fd, data, fds);
}

/**
 * Receives bytes into `buf` and up to `maxFds` passed fds (MSG_CMSG_CLOEXEC).
 * @param buf where the bytes go; must not be empty (a zero-length read could not be told apart
 *   from EOF)
 * @param maxFds how many fds to accept, `0 <= maxFds <= 253`; more is reported as `fdsTruncated`
 * @returns what arrived, or `null` when nothing is queued on a non-blocking socket (EAGAIN)
 */
export function recvMsg(fd: number, buf: Uint8Array, maxFds = 16): ReceivedMessage | null {
  return native.recvMsg(fd, buf, maxFds);
}

/** Shuts down one or both directions of a connected socket (shutdown); the fd stays open. */
export function shutdownSocket(fd: number, how: ShutdownHow): void {
  native.shutdownSocket(fd, how);
}

/** The credentials of the process at the other end of a connected UNIX socket (SO_PEERCRED). */
export function peerCredentials(fd: number): PeerCredentials {
  return native.peerCredentials(fd);
}

/**
 * Creates a socket of any kind (socket(2), always close-on-exec), for interfaces that need one
 * only as an ioctl target, such as SIOCGIFCONF on an AF_INET socket.
 * @param domain address family, e.g. 2 (AF_INET)
 * @param type socket type, e.g. 2 (SOCK_DGRAM); SOCK_NONBLOCK may be or-ed in
 */
export function socketRaw(domain: number, type: number, protocol = 0): number {
  return native.socketRaw(domain, type, protocol);
}
