// SPDX-License-Identifier: GPL-2.0
/*
 * mdk_e2e: the guest side of mdevkit's real-QEMU end-to-end test (test/e2e/qemu/run.sh).
 *
 * Binds every edu (1234:11e8: mdevkit's, served over vfio-user, and QEMU's in-process one) and the
 * example vGPU (1b36:7fa0). Each bound device gets two sysfs attributes:
 *   mdk_run      write a command, it runs synchronously; read: the result line of the last command
 *   mdk_progress read: "<reads> <running>" of a running `spin`
 * Commands (results are "key=value ..." lines the init script prints and the harness asserts):
 *   edu:  mmio | irq intx | irq msi | dma | p2p | bench | spin <ms>
 *   vgpu: mmio | irq | ring | bench | spin <ms>
 * Interrupt vectors are allocated only for the duration of a command (mmio runs with none).
 */
#include <linux/module.h>
#include <linux/pci.h>
#include <linux/interrupt.h>
#include <linux/completion.h>
#include <linux/dma-mapping.h>
#include <linux/ktime.h>
#include <linux/delay.h>
#include <linux/sort.h>
#include <linux/slab.h>
#include <linux/io.h>
#include <linux/io-64-nonatomic-lo-hi.h>

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("mdevkit real-QEMU e2e guest test driver");

#define EDU_ID 0x00
#define EDU_LIVENESS 0x04
#define EDU_FACTORIAL 0x08
#define EDU_STATUS 0x20
#define EDU_IRQ_STATUS 0x24
#define EDU_IRQ_RAISE 0x60
#define EDU_IRQ_ACK 0x64
#define EDU_DMA_SRC 0x80
#define EDU_DMA_DST 0x88
#define EDU_DMA_COUNT 0x90
#define EDU_DMA_CMD 0x98
#define EDU_BUF 0x40000
#define EDU_ID_VALUE 0x010000ed

#define VG_ID 0x000
#define VG_VERSION 0x004
#define VG_CONTROL 0x008
#define VG_INT_STATUS 0x010
#define VG_INT_MASK 0x014
#define VG_DOORBELL 0x020
#define VG_RING_BASE 0x028
#define VG_RING_SIZE 0x030
#define VG_RING_HEAD 0x034
#define VG_RING_TAIL 0x038
#define VG_GTT_ROOT 0x040
#define VG_SCANOUT_WIDTH 0x06c
#define VG_FENCE_VALUE 0x080
#define VG_ERROR 0x088
#define VG_ID_VALUE 0x55504756

#define RESULT_MAX 1024
#define STALL_NS (1000ull * 1000 * 1000) /* a register write this slow means QEMU timed out */

enum kind { KIND_EDU, KIND_VGPU };

struct mdk {
	struct pci_dev *pdev;
	enum kind kind;
	void __iomem *bar0;
	void __iomem *vram; /* vGPU BAR2 */
	resource_size_t vram_len;
	struct mutex lock;
	/* interrupts */
	bool irq_on;
	int irq;
	const char *irq_mode;
	atomic_t handled, spurious;
	u32 last_status;
	u64 t_trigger, t_handled;
	struct completion done;
	/* spin progress */
	atomic64_t spin_reads;
	atomic_t spinning;
	char result[RESULT_MAX];
};

static struct mdk *vgpu_dev; /* the p2p target */
static DEFINE_MUTEX(vgpu_dev_lock);

static irqreturn_t mdk_isr(int irq, void *arg)
{
	struct mdk *m = arg;
	u32 st;

	if (m->kind == KIND_EDU) {
		st = ioread32(m->bar0 + EDU_IRQ_STATUS);
		if (!st) {
			atomic_inc(&m->spurious);
			return IRQ_NONE;
		}
		iowrite32(st, m->bar0 + EDU_IRQ_ACK);
	} else {
		st = ioread32(m->bar0 + VG_INT_STATUS);
		if (!st) {
			atomic_inc(&m->spurious);
			return IRQ_NONE;
		}
		iowrite32(st, m->bar0 + VG_INT_STATUS); /* W1C */
	}
	m->last_status = st;
	m->t_handled = ktime_get_ns();
	atomic_inc(&m->handled);
	complete(&m->done);
	return IRQ_HANDLED;
}

/* Allocates one vector of the given type and installs the handler. */
static int irq_setup(struct mdk *m, unsigned int type)
{
	int rc = pci_alloc_irq_vectors(m->pdev, 1, 1, type);

	if (rc < 0)
		return rc;
	m->irq = pci_irq_vector(m->pdev, 0);
	atomic_set(&m->handled, 0);
	atomic_set(&m->spurious, 0);
	m->last_status = 0;
	reinit_completion(&m->done);
	rc = request_irq(m->irq, mdk_isr, type == PCI_IRQ_LEGACY ? IRQF_SHARED : 0, "mdk_e2e", m);
	if (rc) {
		pci_free_irq_vectors(m->pdev);
		return rc;
	}
	m->irq_mode = type == PCI_IRQ_LEGACY ? "intx" : type == PCI_IRQ_MSI ? "msi" : "msix";
	m->irq_on = true;
	return 0;
}

static void irq_teardown(struct mdk *m)
{
	if (!m->irq_on)
		return;
	free_irq(m->irq, m);
	pci_free_irq_vectors(m->pdev);
	m->irq_on = false;
}

/* Waits for the next interrupt; returns the latency trigger→handler in ns, or -1 on timeout. */
static s64 wait_irq(struct mdk *m, unsigned int ms)
{
	if (!wait_for_completion_timeout(&m->done, msecs_to_jiffies(ms)))
		return -1;
	return (s64)(m->t_handled - m->t_trigger);
}

#define ADD(m, fmt, ...) \
	scnprintf((m)->result + strlen((m)->result), RESULT_MAX - strlen((m)->result), fmt, ##__VA_ARGS__)

static void put_bytes(struct mdk *m, const char *key, const u8 *p, int n)
{
	int i;

	ADD(m, " %s=", key);
	for (i = 0; i < n; i++)
		ADD(m, "%02x", p[i]);
}

/* ------------------------------------------------------------------ edu */

static void edu_mmio(struct mdk *m)
{
	u32 id, live, f5, f10, st, raised, acked;
	int i;

	id = ioread32(m->bar0 + EDU_ID);
	iowrite32(0x12345678, m->bar0 + EDU_LIVENESS);
	live = ioread32(m->bar0 + EDU_LIVENESS);
	/* QEMU's edu computes in a thread (STATUS bit 0 busy); mdevkit's synchronously. */
	iowrite32(5, m->bar0 + EDU_FACTORIAL);
	for (i = 0; i < 1000 && ((st = ioread32(m->bar0 + EDU_STATUS)) & 1); i++)
		usleep_range(100, 200);
	f5 = ioread32(m->bar0 + EDU_FACTORIAL);
	iowrite32(10, m->bar0 + EDU_FACTORIAL);
	for (i = 0; i < 1000 && ((st = ioread32(m->bar0 + EDU_STATUS)) & 1); i++)
		usleep_range(100, 200);
	f10 = ioread32(m->bar0 + EDU_FACTORIAL);
	/* interrupt status with no vector set up: raise, read, acknowledge, read */
	iowrite32(0x4, m->bar0 + EDU_IRQ_RAISE);
	raised = ioread32(m->bar0 + EDU_IRQ_STATUS);
	iowrite32(0x4, m->bar0 + EDU_IRQ_ACK);
	acked = ioread32(m->bar0 + EDU_IRQ_STATUS);
	ADD(m, "id=0x%08x liveness=0x%08x fact5=%u fact10=%u irq_raised=0x%x irq_acked=0x%x",
	    id, live, f5, f10, raised, acked);
}

static int cmp_u64(const void *a, const void *b)
{
	u64 x = *(const u64 *)a, y = *(const u64 *)b;

	return x < y ? -1 : x > y;
}

/* N rounds of raise → handler; reports counts and the latency distribution. */
static void edu_irq(struct mdk *m, const char *mode)
{
	enum { N = 16 };
	u64 lat[N];
	int i, ok = 0, rc;
	u32 after;
	unsigned int type = !strcmp(mode, "intx") ? PCI_IRQ_LEGACY : PCI_IRQ_MSI;

	rc = irq_setup(m, type);
	if (rc) {
		ADD(m, "mode=%s error=setup%d", mode, rc);
		return;
	}
	for (i = 0; i < N; i++) {
		s64 l;

		reinit_completion(&m->done);
		m->t_trigger = ktime_get_ns();
		iowrite32(0x4, m->bar0 + EDU_IRQ_RAISE);
		l = wait_irq(m, 3000);
		if (l < 0)
			break;
		if (m->last_status == 0x4)
			ok++;
		lat[i] = l;
	}
	/* a stray re-signal may still be in flight (INTx under TCG): let it land before counting */
	msleep(20);
	after = ioread32(m->bar0 + EDU_IRQ_STATUS);
	ADD(m, "mode=%s rounds=%d status_ok=%d handled=%d spurious=%d status_after=0x%x", m->irq_mode, i, ok,
	    atomic_read(&m->handled), atomic_read(&m->spurious), after);
	if (i > 0) {
		sort(lat, i, sizeof(lat[0]), cmp_u64, NULL);
		ADD(m, " lat_p50_us=%llu lat_max_us=%llu", lat[i / 2] / 1000, lat[i - 1] / 1000);
	}
	irq_teardown(m);
}

/* One edu DMA transfer, completion by interrupt (no MMIO while it runs: see docs). */
static s64 edu_dma_run(struct mdk *m, u64 src, u64 dst, u32 count, u32 cmd, u32 *status)
{
	s64 l;

	reinit_completion(&m->done);
	m->last_status = 0;
	writeq(src, m->bar0 + EDU_DMA_SRC);
	writeq(dst, m->bar0 + EDU_DMA_DST);
	writeq(count, m->bar0 + EDU_DMA_COUNT);
	m->t_trigger = ktime_get_ns();
	writeq(cmd | 0x1 | 0x4, m->bar0 + EDU_DMA_CMD);
	l = wait_irq(m, 8000);
	*status = m->last_status;
	return l;
}

static u8 pat(int seed, int i)
{
	return (u8)(i * (2 * seed + 1) + 0x11 * seed + (i >> 8));
}

/* Returns -1 if equal, else the first differing index. */
static int first_diff(const u8 *a, const u8 *b, int n)
{
	int i;

	for (i = 0; i < n; i++)
		if (a[i] != b[i])
			return i;
	return -1;
}

static bool is_ours(struct mdk *m)
{
	/* QEMU's edu has no MMIO window on its DMA buffer; mdevkit's does (BAR0 + 0x40000). */
	return m->pdev->devfn != PCI_DEVFN(4, 0) || m->pdev->bus->number != 0;
}

static void edu_dma(struct mdk *m)
{
	enum { LEN = 256 };
	u8 *cpu, got[LEN], want[LEN];
	dma_addr_t dma;
	u32 st;
	s64 l1, l2;
	int i, d, rc;
	bool mmio_buf = is_ours(m);

	/* QEMU's edu clamps DMA addresses to 28 bits */
	if (dma_set_mask_and_coherent(&m->pdev->dev, DMA_BIT_MASK(28))) {
		ADD(m, "error=dma-mask");
		return;
	}
	cpu = dma_alloc_coherent(&m->pdev->dev, 8192, &dma, GFP_KERNEL);
	if (!cpu) {
		ADD(m, "error=dma-alloc");
		return;
	}
	rc = irq_setup(m, PCI_IRQ_MSI);
	if (rc) {
		ADD(m, "error=irq-setup%d", rc);
		goto out;
	}
	for (i = 0; i < LEN; i++)
		cpu[i] = pat(1, i);
	memset(cpu + 0x1000, 0, LEN);
	/* RAM → device buffer */
	l1 = edu_dma_run(m, dma, EDU_BUF, LEN, 0, &st);
	ADD(m, "to_dev_irq=0x%x to_dev_us=%lld", st, l1 < 0 ? -1LL : l1 / 1000);
	if (mmio_buf) {
		for (i = 0; i < LEN; i += 4)
			*(u32 *)(got + i) = ioread32(m->bar0 + EDU_BUF + i);
		d = first_diff(got, cpu, LEN);
		ADD(m, " dma_in=%s", d < 0 ? "ok" : "bad");
		if (d >= 0)
			put_bytes(m, "in_got", got, 16), put_bytes(m, "in_want", cpu, 16);
		/* new contents through MMIO, so the device → RAM leg is checked on its own */
		for (i = 0; i < LEN; i++)
			want[i] = pat(2, i);
		for (i = 0; i < LEN; i += 4)
			iowrite32(*(u32 *)(want + i), m->bar0 + EDU_BUF + i);
	} else {
		ADD(m, " dma_in=roundtrip");
		memcpy(want, cpu, LEN);
	}
	/* device buffer → RAM */
	l2 = edu_dma_run(m, EDU_BUF, dma + 0x1000, LEN, 0x2, &st);
	ADD(m, " to_ram_irq=0x%x to_ram_us=%lld", st, l2 < 0 ? -1LL : l2 / 1000);
	d = first_diff(cpu + 0x1000, want, LEN);
	ADD(m, " dma_out=%s", d < 0 ? "ok" : "bad");
	if (d >= 0)
		put_bytes(m, "out_got", cpu + 0x1000, 16), put_bytes(m, "out_want", want, 16);
	irq_teardown(m);
out:
	dma_free_coherent(&m->pdev->dev, 8192, cpu, dma);
}

/*
 * Peer-to-peer: edu's DMA engine reads from and writes to the vGPU's VRAM BAR. QEMU maps that BAR
 * into the edu server without an fd, so both legs travel as DMA_READ / DMA_WRITE messages.
 */
static void edu_p2p(struct mdk *m)
{
	enum { LEN = 256, OFF_R = 0x80000, OFF_W = 0x90000 };
	u8 got[LEN], want[LEN];
	struct mdk *g;
	u64 vram_bus;
	u32 st;
	s64 l;
	int i, d, rc;

	mutex_lock(&vgpu_dev_lock);
	g = vgpu_dev;
	mutex_unlock(&vgpu_dev_lock);
	if (!g || !g->vram) {
		ADD(m, "error=no-vgpu");
		return;
	}
	if (!is_ours(m)) {
		ADD(m, "error=not-mdevkit-edu");
		return;
	}
	vram_bus = pci_bus_address(g->pdev, 2);
	ADD(m, "vram=0x%llx", vram_bus);
	if (dma_set_mask_and_coherent(&m->pdev->dev, DMA_BIT_MASK(64))) {
		ADD(m, " error=dma-mask");
		return;
	}
	rc = irq_setup(m, PCI_IRQ_MSI);
	if (rc) {
		ADD(m, " error=irq-setup%d", rc);
		return;
	}
	/* VRAM → edu buffer (server sends DMA_READ) */
	for (i = 0; i < LEN; i++)
		want[i] = pat(3, i);
	memcpy_toio(g->vram + OFF_R, want, LEN);
	l = edu_dma_run(m, vram_bus + OFF_R, EDU_BUF, LEN, 0, &st);
	for (i = 0; i < LEN; i += 4)
		*(u32 *)(got + i) = ioread32(m->bar0 + EDU_BUF + i);
	d = first_diff(got, want, LEN);
	ADD(m, " read_irq=0x%x read_us=%lld p2p_read=%s", st, l < 0 ? -1LL : l / 1000, d < 0 ? "ok" : "bad");
	if (d >= 0) {
		ADD(m, " read_first_diff=%d", d);
		put_bytes(m, "read_got", got, 12), put_bytes(m, "read_want", want, 12);
	}
	/* edu buffer → VRAM (server sends DMA_WRITE) */
	for (i = 0; i < LEN; i++)
		want[i] = pat(4, i);
	for (i = 0; i < LEN; i += 4)
		iowrite32(*(u32 *)(want + i), m->bar0 + EDU_BUF + i);
	memset_io(g->vram + OFF_W, 0, LEN);
	l = edu_dma_run(m, EDU_BUF, vram_bus + OFF_W, LEN, 0x2, &st);
	memcpy_fromio(got, g->vram + OFF_W, LEN);
	d = first_diff(got, want, LEN);
	ADD(m, " write_irq=0x%x write_us=%lld p2p_write=%s", st, l < 0 ? -1LL : l / 1000, d < 0 ? "ok" : "bad");
	if (d >= 0) {
		ADD(m, " write_first_diff=%d", d);
		put_bytes(m, "write_got", got, 12), put_bytes(m, "write_want", want, 12);
	}
	irq_teardown(m);
}

/* ------------------------------------------------------------------ vGPU */

static void vgpu_mmio(struct mdk *m)
{
	u32 id = ioread32(m->bar0 + VG_ID), ver = ioread32(m->bar0 + VG_VERSION), rw;

	iowrite32(0x123, m->bar0 + VG_SCANOUT_WIDTH);
	rw = ioread32(m->bar0 + VG_SCANOUT_WIDTH);
	iowrite32(0, m->bar0 + VG_SCANOUT_WIDTH);
	ADD(m, "id=0x%08x version=0x%08x rw=0x%x fence_value=0x%x ring_head=%u error=%u vram_len=0x%llx",
	    id, ver, rw, ioread32(m->bar0 + VG_FENCE_VALUE), ioread32(m->bar0 + VG_RING_HEAD),
	    ioread32(m->bar0 + VG_ERROR), (u64)m->vram_len);
}

/* MSI-X without DMA: a doorbell while the engine is disabled raises the error interrupt. */
static void vgpu_irq(struct mdk *m)
{
	enum { N = 16 };
	u64 lat[N];
	int i, ok = 0, rc;

	rc = irq_setup(m, PCI_IRQ_MSIX);
	if (rc) {
		ADD(m, "mode=msix error=setup%d", rc);
		return;
	}
	iowrite32(0, m->bar0 + VG_CONTROL);
	iowrite32(0x3, m->bar0 + VG_INT_MASK);
	for (i = 0; i < N; i++) {
		s64 l;

		reinit_completion(&m->done);
		m->t_trigger = ktime_get_ns();
		iowrite32(1, m->bar0 + VG_DOORBELL);
		l = wait_irq(m, 3000);
		if (l < 0)
			break;
		if (m->last_status == 0x2)
			ok++;
		lat[i] = l;
	}
	msleep(20);
	ADD(m, "mode=%s rounds=%d status_ok=%d handled=%d spurious=%d error=%u int_status_after=0x%x", m->irq_mode, i,
	    ok, atomic_read(&m->handled), atomic_read(&m->spurious), ioread32(m->bar0 + VG_ERROR),
	    ioread32(m->bar0 + VG_INT_STATUS));
	if (i > 0) {
		sort(lat, i, sizeof(lat[0]), cmp_u64, NULL);
		ADD(m, " lat_p50_us=%llu lat_max_us=%llu", lat[i / 2] / 1000, lat[i - 1] / 1000);
	}
	iowrite32(0, m->bar0 + VG_INT_MASK);
	irq_teardown(m);
}

static u32 img_pixel(int i)
{
	return 0xa0000000u | ((u32)i * 0x00010307u & 0x00ffffffu);
}

static void put_cmd(u8 *ring, int slot, const u32 *words, int n)
{
	memset(ring + slot * 32, 0, 32);
	memcpy(ring + slot * 32, words, n * 4);
}

/*
 * Command ring in guest RAM: FILL_RECT, BLIT through the GTT (image in guest RAM), FENCE into
 * guest RAM. Checks fence in RAM and register, ring head, error, VRAM contents (through BAR2).
 * Times the GTT_ROOT write, the doorbell write (both wait for the server under QEMU) and doorbell →
 * fence interrupt.
 */
static void vgpu_ring(struct mdk *m)
{
	enum { RING = 0, GTT = 0x1000, FENCE = 0x2000, IMG = 0x3000, BUF = 0x4000 };
	const u32 fill_color = 0x00ff8000, fence_val = 0xfe0c0001;
	u8 *cpu;
	dma_addr_t dma;
	u32 head, fence_ram, fence_reg, err, ring_head, tail, st;
	u64 t0, t_gtt, t_db = 0;
	u32 err_before;
	s64 l;
	int i, x, y, fill_bad = 0, blit_bad = 0, rc;

	if (!m->vram) {
		ADD(m, "error=no-vram");
		return;
	}
	if (dma_set_mask_and_coherent(&m->pdev->dev, DMA_BIT_MASK(64))) {
		ADD(m, "error=dma-mask");
		return;
	}
	cpu = dma_alloc_coherent(&m->pdev->dev, BUF, &dma, GFP_KERNEL);
	if (!cpu) {
		ADD(m, "error=dma-alloc");
		return;
	}
	memset(cpu, 0, BUF);
	rc = irq_setup(m, PCI_IRQ_MSIX);
	if (rc) {
		ADD(m, "error=irq-setup%d", rc);
		goto out;
	}
	for (i = 0; i < 1024; i++)
		((u32 *)(cpu + IMG))[i] = img_pixel(i);
	((u64 *)(cpu + GTT))[0] = (u64)(dma + IMG) | 1;
	memset_io(m->vram, 0, 0x4000);

	head = ioread32(m->bar0 + VG_RING_HEAD);
	{
		u32 fill[5] = { 1, 0, 256, 16 | (4 << 16), fill_color };
		/* BLIT {op 2, dst, u64 srcGva, srcStride, dstStride, u16 w, u16 h} */
		u32 blit[7] = { 2, 8 * 256, 0, 0, 64, 256, 16 | (4 << 16) };
		u32 fence[4] = { 3, fence_val, (u32)(dma + FENCE), (u32)((u64)(dma + FENCE) >> 32) };

		put_cmd(cpu + RING, (head / 32 + 0) % 128, fill, 5);
		put_cmd(cpu + RING, (head / 32 + 1) % 128, blit, 7);
		put_cmd(cpu + RING, (head / 32 + 2) % 128, fence, 4);
	}
	tail = (head + 96) % 4096;
	wmb();
	err_before = ioread32(m->bar0 + VG_ERROR);
	t0 = ktime_get_ns();
	writeq(dma + GTT, m->bar0 + VG_GTT_ROOT); /* the device reads the GTT page now */
	t_gtt = ktime_get_ns() - t0;
	if (t_gtt > STALL_NS)
		goto stalled;
	writeq(dma + RING, m->bar0 + VG_RING_BASE);
	iowrite32(4096, m->bar0 + VG_RING_SIZE);
	iowrite32(0x3, m->bar0 + VG_INT_MASK);
	iowrite32(1, m->bar0 + VG_CONTROL);
	iowrite32(tail, m->bar0 + VG_RING_TAIL);
	reinit_completion(&m->done);
	m->t_trigger = t0 = ktime_get_ns();
	iowrite32(1, m->bar0 + VG_DOORBELL);
	t_db = ktime_get_ns() - t0;
	if (t_db > STALL_NS)
		goto stalled;
	l = wait_irq(m, 8000);
	st = m->last_status;
	rmb();
	fence_ram = READ_ONCE(*(u32 *)(cpu + FENCE));
	fence_reg = ioread32(m->bar0 + VG_FENCE_VALUE);
	ring_head = ioread32(m->bar0 + VG_RING_HEAD);
	err = ioread32(m->bar0 + VG_ERROR);
	for (y = 0; y < 5; y++)
		for (x = 0; x < 17; x++) {
			u32 v = ioread32(m->vram + y * 256 + x * 4);
			u32 want = (y < 4 && x < 16) ? fill_color : 0;

			fill_bad += v != want;
		}
	for (y = 0; y < 4; y++)
		for (x = 0; x < 16; x++)
			blit_bad += ioread32(m->vram + (8 + y) * 256 + x * 4) != img_pixel(y * 16 + x);
	ADD(m, "irq=0x%x fence_ram=0x%08x fence_value=0x%08x ring_head=%u want_head=%u error=%u error_before=%u fill=%s blit=%s",
	    st, fence_ram, fence_reg, ring_head, tail, err, err_before, fill_bad ? "bad" : "ok", blit_bad ? "bad" : "ok");
	ADD(m, " gtt_write_us=%llu doorbell_write_us=%llu fence_irq_us=%lld", t_gtt / 1000, t_db / 1000,
	    l < 0 ? -1LL : l / 1000);
	if (fill_bad || blit_bad) {
		u8 px[16];

		memcpy_fromio(px, m->vram, 16);
		put_bytes(m, "vram0", px, 16);
		memcpy_fromio(px, m->vram + 8 * 256, 16);
		put_bytes(m, "vram_row8", px, 16);
	}
	iowrite32(0, m->bar0 + VG_INT_MASK);
	irq_teardown(m);
out:
	dma_free_coherent(&m->pdev->dev, BUF, cpu, dma);
	return;
stalled:
	/*
	 * A register write took seconds: QEMU timed out waiting for the server (which was waiting for
	 * QEMU to answer a DMA message). Its stream is out of step now and every further access would
	 * wait the same timeout, so report and stop touching the device; the buffer and vector are
	 * left as they are (the device may still write to the buffer).
	 */
	ADD(m, "error=stalled error_before=%u gtt_write_us=%llu doorbell_write_us=%llu", err_before, t_gtt / 1000,
	    t_db / 1000);
}

/* ------------------------------------------------------------------ common */

/* Per-access cost of a 4-byte read of BAR0 + 0 (the ID register). */
static void bench(struct mdk *m)
{
	enum { N = 2000 };
	u64 *t = kmalloc_array(N, sizeof(u64), GFP_KERNEL);
	u64 a, b, clk, total;
	u32 want = m->kind == KIND_EDU ? EDU_ID_VALUE : VG_ID_VALUE, bad = 0;
	int i;

	if (!t) {
		ADD(m, "error=nomem");
		return;
	}
	/* the clock's own cost */
	for (i = 0; i < N; i++) {
		a = ktime_get_ns();
		b = ktime_get_ns();
		t[i] = b - a;
	}
	sort(t, N, sizeof(u64), cmp_u64, NULL);
	clk = t[N / 2];
	for (i = 0; i < N; i++) {
		a = ktime_get_ns();
		bad += ioread32(m->bar0) != want;
		b = ktime_get_ns();
		t[i] = b - a;
		if ((i & 63) == 63)
			cond_resched();
	}
	a = ktime_get_ns();
	for (i = 0; i < N; i++)
		bad += ioread32(m->bar0) != want;
	total = ktime_get_ns() - a;
	sort(t, N, sizeof(u64), cmp_u64, NULL);
	ADD(m, "n=%d bad=%u p50_ns=%llu p99_ns=%llu batch_mean_ns=%llu clock_ns=%llu", N, bad, t[N / 2],
	    t[N * 99 / 100], total / N, clk);
	kfree(t);
}

/* Reads the ID register until it changes (device gone) or `ms` have passed. */
static void spin(struct mdk *m, unsigned int ms)
{
	u32 want = m->kind == KIND_EDU ? EDU_ID_VALUE : VG_ID_VALUE, v = want;
	u64 end = ktime_get_ns() + (u64)ms * 1000000;
	u64 n = 0;

	atomic64_set(&m->spin_reads, 0);
	atomic_set(&m->spinning, 1);
	while (ktime_get_ns() < end) {
		v = ioread32(m->bar0);
		if (v != want)
			break;
		atomic64_set(&m->spin_reads, ++n);
		if ((n & 15) == 0)
			cond_resched();
	}
	atomic_set(&m->spinning, 0);
	ADD(m, "reads=%llu last=0x%08x end=%s", n, v, v != want ? "changed" : "time");
}

static ssize_t mdk_run_show(struct device *dev, struct device_attribute *attr, char *buf)
{
	struct mdk *m = dev_get_drvdata(dev);

	return sysfs_emit(buf, "%s\n", m->result);
}

static ssize_t mdk_run_store(struct device *dev, struct device_attribute *attr, const char *buf, size_t count)
{
	struct mdk *m = dev_get_drvdata(dev);
	char cmd[32];
	unsigned int arg = 0;

	if (count >= sizeof(cmd))
		return -EINVAL;
	memcpy(cmd, buf, count);
	cmd[count] = 0;
	strim(cmd);
	mutex_lock(&m->lock);
	m->result[0] = 0;
	if (!strcmp(cmd, "mmio"))
		m->kind == KIND_EDU ? edu_mmio(m) : vgpu_mmio(m);
	else if (!strcmp(cmd, "bench"))
		bench(m);
	else if (sscanf(cmd, "spin %u", &arg) == 1)
		spin(m, arg);
	else if (m->kind == KIND_EDU && !strcmp(cmd, "irq intx"))
		edu_irq(m, "intx");
	else if (m->kind == KIND_EDU && !strcmp(cmd, "irq msi"))
		edu_irq(m, "msi");
	else if (m->kind == KIND_EDU && !strcmp(cmd, "dma"))
		edu_dma(m);
	else if (m->kind == KIND_EDU && !strcmp(cmd, "p2p"))
		edu_p2p(m);
	else if (m->kind == KIND_VGPU && !strcmp(cmd, "irq"))
		vgpu_irq(m);
	else if (m->kind == KIND_VGPU && !strcmp(cmd, "ring"))
		vgpu_ring(m);
	else
		ADD(m, "error=unknown-command");
	mutex_unlock(&m->lock);
	return count;
}
static DEVICE_ATTR_RW(mdk_run);

static ssize_t mdk_progress_show(struct device *dev, struct device_attribute *attr, char *buf)
{
	struct mdk *m = dev_get_drvdata(dev);

	return sysfs_emit(buf, "%lld %d\n", (long long)atomic64_read(&m->spin_reads), atomic_read(&m->spinning));
}
static DEVICE_ATTR_RO(mdk_progress);

static int mdk_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	struct mdk *m;
	int rc;

	m = devm_kzalloc(&pdev->dev, sizeof(*m), GFP_KERNEL);
	if (!m)
		return -ENOMEM;
	m->pdev = pdev;
	m->kind = id->driver_data;
	mutex_init(&m->lock);
	init_completion(&m->done);
	rc = pcim_enable_device(pdev);
	if (rc)
		return rc;
	pci_set_master(pdev);
	m->bar0 = pcim_iomap(pdev, 0, 0);
	if (!m->bar0)
		return -ENOMEM;
	if (m->kind == KIND_VGPU) {
		m->vram_len = pci_resource_len(pdev, 2);
		m->vram = pcim_iomap(pdev, 2, 0);
	}
	pci_set_drvdata(pdev, m);
	rc = device_create_file(&pdev->dev, &dev_attr_mdk_run);
	if (!rc)
		rc = device_create_file(&pdev->dev, &dev_attr_mdk_progress);
	if (rc)
		return rc;
	if (m->kind == KIND_VGPU) {
		mutex_lock(&vgpu_dev_lock);
		vgpu_dev = m;
		mutex_unlock(&vgpu_dev_lock);
	}
	dev_info(&pdev->dev, "mdk_e2e: bound (%s)\n", m->kind == KIND_EDU ? "edu" : "vgpu");
	return 0;
}

static void mdk_remove(struct pci_dev *pdev)
{
	struct mdk *m = pci_get_drvdata(pdev);

	device_remove_file(&pdev->dev, &dev_attr_mdk_progress);
	device_remove_file(&pdev->dev, &dev_attr_mdk_run);
	irq_teardown(m);
	mutex_lock(&vgpu_dev_lock);
	if (vgpu_dev == m)
		vgpu_dev = NULL;
	mutex_unlock(&vgpu_dev_lock);
}

static const struct pci_device_id mdk_ids[] = {
	{ PCI_DEVICE(0x1234, 0x11e8), .driver_data = KIND_EDU },
	{ PCI_DEVICE(0x1b36, 0x7fa0), .driver_data = KIND_VGPU },
	{ 0 }
};
MODULE_DEVICE_TABLE(pci, mdk_ids);

static struct pci_driver mdk_driver = {
	.name = "mdk_e2e",
	.id_table = mdk_ids,
	.probe = mdk_probe,
	.remove = mdk_remove,
};
module_pci_driver(mdk_driver);
