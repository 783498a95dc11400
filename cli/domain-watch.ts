/**
 * Noticing that a Xen domain is gone, for `mdevkit serve --xen … --save FILE`.
 *
 * xl has no hook for a secondary device model: libxl tells only the primary one that the domain
 * is being saved (QMP `xen-save-devices-state` to qemu-xen). So the IOREQ server watches its
 * domain itself. `xl save` suspends the guest — which quiesces its drivers first — saves its
 * memory and destroys it; the server then finds its ioreq server gone (ESRCH: no such domain;
 * ENOENT: Xen destroyed the servers of the dying domain), saves the device state and exits. The
 * guest can no longer touch the device by then, so that state is final. `xl restore -p` makes a
 * new, paused domain (a new domid); `mdevkit serve … --xen <new domid> --restore FILE` serves the
 * device from that state, and `xl unpause` lets the guest continue.
 * @module
 */
import { isErrno } from '../src/errors.js';
import type { IoreqServer } from '../adapters/xen/ioreq-server.js';

/** A running watch (see {@link watchDomain}). */
export interface DomainWatch {
  /** Resolves with a sentence saying why, once the domain is gone. Never rejects. */
  readonly gone: Promise<string>;
  /** Stops watching. */
  cancel(): void;
}

/**
 * Polls the server's ioreq server every `intervalMs` (0: never) and resolves `gone` once it
 * answers ESRCH or ENOENT. Other errors are passed to `log` and polling goes on.
 */
export function watchDomain(server: IoreqServer, intervalMs: number, log: (line: string) => void = () => {}): DomainWatch {
  let timer: NodeJS.Timeout | null = null;
  const gone = new Promise<string>((resolve) => {
    if (intervalMs <= 0) return;
    timer = setInterval(() => {
      try {
        server.host.getIoreqServerInfo(server.id);
      } catch (e) {
        if (isErrno(e, 'ESRCH') || isErrno(e, 'ENOENT')) {
          if (timer) clearInterval(timer);
          timer = null;
          resolve(`domain ${server.host.domid} is gone (${(e as Error).message})`);
        } else {
          log(`checking domain ${server.host.domid}: ${(e as Error).message}`);
        }
      }
    }, intervalMs);
  });
  return {
    gone,
    cancel() {
      if (timer) clearInterval(timer);
      timer = null;
    },
  };
}
