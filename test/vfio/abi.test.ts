import { describe, expect, it } from 'vitest';
import { binding } from '../../src/native/binding.js';
import { DeviceFlag, DmaFlag, Feature, HEADER_SIZE, IrqInfoFlag, IrqSetFlag, Layout, MigState, MigrationFlag, PciIrq, PciRegion, RegionCap, RegionFlag } from '../../adapters/vfio/protocol.js';

// The native core compiles these numbers out of <linux/vfio.h> (and static_asserts the layouts).
const abi = binding['vfioAbi'] as Record<string, number>;

describe('vfio-user ABI against <linux/vfio.h>', () => {
  it('struct layouts match the kernel header', () => {
    expect(Layout.regionInfo.sizeof).toBe(abi['regionInfoSize']);
    expect(Layout.regionInfo.capOffset).toBe(abi['regionInfoCapOffset']);
    expect(Layout.regionInfo.size).toBe(abi['regionInfoSize_size']);
    expect(Layout.regionInfo.offset).toBe(abi['regionInfoOffset']);
    expect(Layout.capHeader.sizeof).toBe(abi['capHeaderSize']);
    expect(Layout.sparseMmap.areas).toBe(abi['sparseAreasOffset']);
    expect(Layout.sparseMmap.areaSize).toBe(abi['sparseAreaSize']);
    expect(Layout.irqInfo.sizeof).toBe(abi['irqInfoSize']);
    expect(Layout.irqSet.sizeof).toBe(abi['irqSetSize']);
    expect(Layout.feature.data).toBe(abi['deviceFeatureSize']);
    expect(Layout.dmaLoggingControl.rangeSize).toBe(abi['dmaLoggingRangeSize']);
    expect(HEADER_SIZE).toBe(abi['headerSize']);
    expect(Layout.regionAccess.data).toBe(abi['regionAccessSize']);
    expect(Layout.migration.sizeof).toBe(abi['migrationFeatureSize']);
    expect(Layout.migState.sizeof).toBe(abi['migStateSize']);
    expect(Layout.migState.dataFd).toBe(abi['migStateDataFdOffset']);
  });

  it('migration states and flags match the kernel header (PRE_COPY where the header has it: Linux >= 6.2)', () => {
    expect([MigState.ERROR, MigState.STOP, MigState.RUNNING, MigState.STOP_COPY, MigState.RESUMING, MigState.RUNNING_P2P]).toEqual([
      abi['DEVICE_STATE_ERROR'], abi['DEVICE_STATE_STOP'], abi['DEVICE_STATE_RUNNING'], abi['DEVICE_STATE_STOP_COPY'], abi['DEVICE_STATE_RESUMING'], abi['DEVICE_STATE_RUNNING_P2P'],
    ]);
    expect([MigrationFlag.STOP_COPY, MigrationFlag.P2P]).toEqual([abi['MIGRATION_STOP_COPY'], abi['MIGRATION_P2P']]);
    if (abi['MIGRATION_PRE_COPY'] !== undefined) {
      expect([MigrationFlag.PRE_COPY, MigState.PRE_COPY, MigState.PRE_COPY_P2P]).toEqual([abi['MIGRATION_PRE_COPY'], abi['DEVICE_STATE_PRE_COPY'], abi['DEVICE_STATE_PRE_COPY_P2P']]);
    } else {
      // Values from Linux 6.2's <linux/vfio.h> (include/uapi/linux/vfio.h), absent from this header.
      expect([MigrationFlag.PRE_COPY, MigState.PRE_COPY, MigState.PRE_COPY_P2P]).toEqual([4, 6, 7]);
    }
  });

  it('flag and index values match the kernel header', () => {
    expect(RegionFlag).toEqual({ READ: abi['REGION_INFO_FLAG_READ'], WRITE: abi['REGION_INFO_FLAG_WRITE'], MMAP: abi['REGION_INFO_FLAG_MMAP'], CAPS: abi['REGION_INFO_FLAG_CAPS'] });
    expect(RegionCap).toEqual({ SPARSE_MMAP: abi['REGION_INFO_CAP_SPARSE_MMAP'], TYPE: abi['REGION_INFO_CAP_TYPE'] });
    expect(IrqInfoFlag).toEqual({ EVENTFD: abi['IRQ_INFO_EVENTFD'], MASKABLE: abi['IRQ_INFO_MASKABLE'], AUTOMASKED: abi['IRQ_INFO_AUTOMASKED'], NORESIZE: abi['IRQ_INFO_NORESIZE'] });
    expect(IrqSetFlag.DATA_NONE).toBe(abi['IRQ_SET_DATA_NONE']);
    expect(IrqSetFlag.DATA_BOOL).toBe(abi['IRQ_SET_DATA_BOOL']);
    expect(IrqSetFlag.DATA_EVENTFD).toBe(abi['IRQ_SET_DATA_EVENTFD']);
    expect(IrqSetFlag.ACTION_MASK).toBe(abi['IRQ_SET_ACTION_MASK']);
    expect(IrqSetFlag.ACTION_UNMASK).toBe(abi['IRQ_SET_ACTION_UNMASK']);
    expect(IrqSetFlag.ACTION_TRIGGER).toBe(abi['IRQ_SET_ACTION_TRIGGER']);
    expect(DeviceFlag).toEqual({ RESET: abi['DEVICE_FLAGS_RESET'], PCI: abi['DEVICE_FLAGS_PCI'] });
    expect([Feature.MASK, Feature.GET, Feature.SET, Feature.PROBE]).toEqual([abi['DEVICE_FEATURE_MASK'], abi['DEVICE_FEATURE_GET'], abi['DEVICE_FEATURE_SET'], abi['DEVICE_FEATURE_PROBE']]);
    expect([Feature.MIGRATION, Feature.MIG_DEVICE_STATE, Feature.DMA_LOGGING_START, Feature.DMA_LOGGING_STOP, Feature.DMA_LOGGING_REPORT]).toEqual([
      abi['DEVICE_FEATURE_MIGRATION'], abi['DEVICE_FEATURE_MIG_DEVICE_STATE'], abi['DEVICE_FEATURE_DMA_LOGGING_START'], abi['DEVICE_FEATURE_DMA_LOGGING_STOP'], abi['DEVICE_FEATURE_DMA_LOGGING_REPORT'],
    ]);
    expect(DmaFlag.UNMAP_ALL).toBe(abi['DMA_UNMAP_FLAG_ALL']);
    expect(DmaFlag.UNMAP_GET_DIRTY_BITMAP).toBe(abi['DMA_UNMAP_FLAG_GET_DIRTY_BITMAP']);
    expect([PciRegion.ROM, PciRegion.CONFIG, PciRegion.VGA, PciRegion.COUNT]).toEqual([abi['PCI_ROM_REGION_INDEX'], abi['PCI_CONFIG_REGION_INDEX'], abi['PCI_VGA_REGION_INDEX'], abi['PCI_NUM_REGIONS']]);
    expect([PciIrq.INTX, PciIrq.MSI, PciIrq.MSIX, PciIrq.ERR, PciIrq.REQ, PciIrq.COUNT]).toEqual([abi['PCI_INTX_IRQ_INDEX'], abi['PCI_MSI_IRQ_INDEX'], abi['PCI_MSIX_IRQ_INDEX'], abi['PCI_ERR_IRQ_INDEX'], abi['PCI_REQ_IRQ_INDEX'], abi['PCI_NUM_IRQS']]);
  });
});
