// Prints the first 256 bytes of a vfio-user server's PCI config space (region 7) as hex, the way the
// server answers it to a client, for test/e2e/qemu/run.sh to compare with what the guest sees.
// Usage: node server-config.mjs <socket>
import { VfioUserClient } from 'mdevkit/vfio-user';

const client = VfioUserClient.connect(process.argv[2], { timeoutMs: 10000 });
try {
  process.stdout.write(Buffer.from(client.regionRead(7, 0, 256)).toString('hex') + '\n');
} finally {
  client.close();
}
