/**
 * Human-readable listings of a device's regions and interrupts.
 * @module
 */
import type { PciDevice } from '../src/pci/device.js';
import { formatSize } from '../src/pci/lspci.js';

/** One line per region: index, size, space, what traps and what maps. */
export function describeRegions(device: PciDevice): string {
  const lines = ['Regions:'];
  for (let i = 0; i <= 6; i++) {
    const r = device.region(i);
    if (!r) continue;
    const label = i === 6 ? 'ROM ' : `BAR${i}`;
    const mapping = r.fullyMappable ? 'mmap' : r.mmapAreas.length > 0 ? `sparse mmap (${r.mmapAreas.map((a) => `${a.offset.toString(16)}+${formatSize(BigInt(a.size))}`).join(', ')})` : 'trapped';
    const overlays = r.overlays.length ? ` overlays: ${r.overlays.map((o) => `${o.name}@${o.offset.toString(16)}`).join(', ')}` : '';
    lines.push(`\t${label} ${r.name}: ${r.space} [size=${formatSize(BigInt(r.size))}] ${mapping}${overlays}`);
  }
  const irq = device.irq;
  const irqs = [irq.intxPin ? `INTx pin ${'?ABCD'[irq.intxPin]}` : null, device.msi ? `MSI ×${device.msi.vectors}` : null, device.msix ? `MSI-X ×${device.msix.vectors}` : null].filter(Boolean);
  lines.push(`Interrupts: ${irqs.join(', ') || 'none'}`);
  return lines.join('\n');
}
