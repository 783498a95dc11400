// The kernel VFIO structs and constants vfio-user reuses, checked against <linux/vfio.h> at build
// time and exported so test/vfio/abi.test.ts can compare adapters/vfio/protocol.ts with them.
#include <linux/vfio.h>

#include <cstddef>

#include "modules.h"
#include "vfio_user_wire.h"

namespace mdevkit {

// The layouts protocol.ts describes; a mismatch with the kernel header fails the build.
static_assert(sizeof(vfio_region_info) == 32 && offsetof(vfio_region_info, index) == 8 &&
                  offsetof(vfio_region_info, cap_offset) == 12 && offsetof(vfio_region_info, size) == 16 &&
                  offsetof(vfio_region_info, offset) == 24,
              "struct vfio_region_info");
static_assert(sizeof(vfio_info_cap_header) == 8 && offsetof(vfio_info_cap_header, next) == 4, "struct vfio_info_cap_header");
static_assert(offsetof(vfio_region_info_cap_sparse_mmap, nr_areas) == 8 && offsetof(vfio_region_info_cap_sparse_mmap, areas) == 16 &&
                  sizeof(vfio_region_sparse_mmap_area) == 16,
              "struct vfio_region_info_cap_sparse_mmap");
static_assert(sizeof(vfio_irq_info) == 16 && offsetof(vfio_irq_info, count) == 12, "struct vfio_irq_info");
static_assert(sizeof(vfio_irq_set) == 20 && offsetof(vfio_irq_set, start) == 12 && offsetof(vfio_irq_set, count) == 16, "struct vfio_irq_set");
static_assert(offsetof(vfio_device_info, num_regions) == 8 && offsetof(vfio_device_info, num_irqs) == 12,
              "struct vfio_device_info (vfio-user uses its first 16 bytes)");
static_assert(sizeof(vfio_device_feature) == 8, "struct vfio_device_feature");
static_assert(offsetof(vfio_device_feature_dma_logging_control, num_ranges) == 8 &&
                  sizeof(vfio_device_feature_dma_logging_range) == 16,
              "DMA logging control (vfio-user inlines the ranges at offset 16)");
static_assert(offsetof(vfio_device_feature_dma_logging_report, page_size) == 16,
              "DMA logging report (vfio-user inlines the bitmap at offset 24)");
static_assert(VFIO_PCI_CONFIG_REGION_INDEX == 7 && VFIO_PCI_NUM_REGIONS == 9 && VFIO_PCI_NUM_IRQS == 5, "PCI indexes");
// Migration v2: vfio-user carries these two feature structs as DEVICE_FEATURE data.
static_assert(sizeof(vfio_device_feature_migration) == 8 && offsetof(vfio_device_feature_migration, flags) == 0,
              "struct vfio_device_feature_migration");
static_assert(sizeof(vfio_device_feature_mig_state) == 8 && offsetof(vfio_device_feature_mig_state, device_state) == 0 &&
                  offsetof(vfio_device_feature_mig_state, data_fd) == 4,
              "struct vfio_device_feature_mig_state");
static_assert(VFIO_DEVICE_STATE_ERROR == 0 && VFIO_DEVICE_STATE_STOP == 1 && VFIO_DEVICE_STATE_RUNNING == 2 &&
                  VFIO_DEVICE_STATE_STOP_COPY == 3 && VFIO_DEVICE_STATE_RESUMING == 4 && VFIO_DEVICE_STATE_RUNNING_P2P == 5,
              "enum vfio_device_mig_state");
static_assert(VFIO_MIGRATION_STOP_COPY == 1 && VFIO_MIGRATION_P2P == 2, "VFIO_MIGRATION_* flags");
// PRE_COPY came with Linux 6.2; older headers (Debian 12's 6.1) do not have it.
#ifdef VFIO_MIGRATION_PRE_COPY
static_assert(VFIO_MIGRATION_PRE_COPY == 4 && VFIO_DEVICE_STATE_PRE_COPY == 6 && VFIO_DEVICE_STATE_PRE_COPY_P2P == 7, "PRE_COPY");
#endif

void InitVfioAbi(Napi::Env env, Napi::Object exports) {
  Napi::Object abi = Napi::Object::New(env);
  auto set = [&](const char* key, double v) { abi.Set(key, Napi::Number::New(env, v)); };
  set("regionInfoSize", sizeof(vfio_region_info));
  set("regionInfoCapOffset", offsetof(vfio_region_info, cap_offset));
  set("regionInfoSize_size", offsetof(vfio_region_info, size));
  set("regionInfoOffset", offsetof(vfio_region_info, offset));
  set("capHeaderSize", sizeof(vfio_info_cap_header));
  set("sparseAreasOffset", offsetof(vfio_region_info_cap_sparse_mmap, areas));
  set("sparseAreaSize", sizeof(vfio_region_sparse_mmap_area));
  set("irqInfoSize", sizeof(vfio_irq_info));
  set("irqSetSize", sizeof(vfio_irq_set));
  set("deviceFeatureSize", sizeof(vfio_device_feature));
  set("dmaLoggingRangeSize", sizeof(vfio_device_feature_dma_logging_range));
  set("headerSize", sizeof(VfioUserHeader));
  set("regionAccessSize", sizeof(VfioUserRegionAccess));
  set("REGION_INFO_FLAG_READ", VFIO_REGION_INFO_FLAG_READ);
  set("REGION_INFO_FLAG_WRITE", VFIO_REGION_INFO_FLAG_WRITE);
  set("REGION_INFO_FLAG_MMAP", VFIO_REGION_INFO_FLAG_MMAP);
  set("REGION_INFO_FLAG_CAPS", VFIO_REGION_INFO_FLAG_CAPS);
  set("REGION_INFO_CAP_SPARSE_MMAP", VFIO_REGION_INFO_CAP_SPARSE_MMAP);
  set("REGION_INFO_CAP_TYPE", VFIO_REGION_INFO_CAP_TYPE);
  set("IRQ_INFO_EVENTFD", VFIO_IRQ_INFO_EVENTFD);
  set("IRQ_INFO_MASKABLE", VFIO_IRQ_INFO_MASKABLE);
  set("IRQ_INFO_AUTOMASKED", VFIO_IRQ_INFO_AUTOMASKED);
  set("IRQ_INFO_NORESIZE", VFIO_IRQ_INFO_NORESIZE);
  set("IRQ_SET_DATA_NONE", VFIO_IRQ_SET_DATA_NONE);
  set("IRQ_SET_DATA_BOOL", VFIO_IRQ_SET_DATA_BOOL);
  set("IRQ_SET_DATA_EVENTFD", VFIO_IRQ_SET_DATA_EVENTFD);
  set("IRQ_SET_ACTION_MASK", VFIO_IRQ_SET_ACTION_MASK);
  set("IRQ_SET_ACTION_UNMASK", VFIO_IRQ_SET_ACTION_UNMASK);
  set("IRQ_SET_ACTION_TRIGGER", VFIO_IRQ_SET_ACTION_TRIGGER);
  set("DEVICE_FLAGS_RESET", VFIO_DEVICE_FLAGS_RESET);
  set("DEVICE_FLAGS_PCI", VFIO_DEVICE_FLAGS_PCI);
  set("DEVICE_FEATURE_MASK", VFIO_DEVICE_FEATURE_MASK);
  set("DEVICE_FEATURE_GET", VFIO_DEVICE_FEATURE_GET);
  set("DEVICE_FEATURE_SET", VFIO_DEVICE_FEATURE_SET);
  set("DEVICE_FEATURE_PROBE", VFIO_DEVICE_FEATURE_PROBE);
  set("DEVICE_FEATURE_MIGRATION", VFIO_DEVICE_FEATURE_MIGRATION);
  set("DEVICE_FEATURE_MIG_DEVICE_STATE", VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE);
  set("DEVICE_FEATURE_DMA_LOGGING_START", VFIO_DEVICE_FEATURE_DMA_LOGGING_START);
  set("DEVICE_FEATURE_DMA_LOGGING_STOP", VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP);
  set("DEVICE_FEATURE_DMA_LOGGING_REPORT", VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT);
  set("migrationFeatureSize", sizeof(vfio_device_feature_migration));
  set("migStateSize", sizeof(vfio_device_feature_mig_state));
  set("migStateDataFdOffset", offsetof(vfio_device_feature_mig_state, data_fd));
  set("MIGRATION_STOP_COPY", VFIO_MIGRATION_STOP_COPY);
  set("MIGRATION_P2P", VFIO_MIGRATION_P2P);
  set("DEVICE_STATE_ERROR", VFIO_DEVICE_STATE_ERROR);
  set("DEVICE_STATE_STOP", VFIO_DEVICE_STATE_STOP);
  set("DEVICE_STATE_RUNNING", VFIO_DEVICE_STATE_RUNNING);
  set("DEVICE_STATE_STOP_COPY", VFIO_DEVICE_STATE_STOP_COPY);
  set("DEVICE_STATE_RESUMING", VFIO_DEVICE_STATE_RESUMING);
  set("DEVICE_STATE_RUNNING_P2P", VFIO_DEVICE_STATE_RUNNING_P2P);
#ifdef VFIO_MIGRATION_PRE_COPY
  set("MIGRATION_PRE_COPY", VFIO_MIGRATION_PRE_COPY);
  set("DEVICE_STATE_PRE_COPY", VFIO_DEVICE_STATE_PRE_COPY);
  set("DEVICE_STATE_PRE_COPY_P2P", VFIO_DEVICE_STATE_PRE_COPY_P2P);
#endif
  set("DMA_UNMAP_FLAG_GET_DIRTY_BITMAP", VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP);
  set("DMA_UNMAP_FLAG_ALL", VFIO_DMA_UNMAP_FLAG_ALL);
  set("PCI_ROM_REGION_INDEX", VFIO_PCI_ROM_REGION_INDEX);
  set("PCI_CONFIG_REGION_INDEX", VFIO_PCI_CONFIG_REGION_INDEX);
  set("PCI_VGA_REGION_INDEX", VFIO_PCI_VGA_REGION_INDEX);
  set("PCI_NUM_REGIONS", VFIO_PCI_NUM_REGIONS);
  set("PCI_INTX_IRQ_INDEX", VFIO_PCI_INTX_IRQ_INDEX);
  set("PCI_MSI_IRQ_INDEX", VFIO_PCI_MSI_IRQ_INDEX);
  set("PCI_MSIX_IRQ_INDEX", VFIO_PCI_MSIX_IRQ_INDEX);
  set("PCI_ERR_IRQ_INDEX", VFIO_PCI_ERR_IRQ_INDEX);
  set("PCI_REQ_IRQ_INDEX", VFIO_PCI_REQ_IRQ_INDEX);
  set("PCI_NUM_IRQS", VFIO_PCI_NUM_IRQS);
  exports.Set("vfioAbi", abi);
}

}  // namespace mdevkit
