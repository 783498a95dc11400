/*
 * Guest-side helper of the display e2e tests (test/e2e/display/guest-display.sh, run by the
 * real-QEMU guest and the real-Xen one), built static on the host against the kernel's UAPI
 * headers. Busybox has no fbset and no way to switch a VT to graphics mode, hence this tool.
 * Every line it prints starts with "QE disp " (the display phase's line protocol, shared by both
 * harnesses). An image argument is a file of raw pixels or "test:<variant>": the test image of
 * test/e2e/display/frames.mjs (testPixel), generated here so that no image file travels with the
 * guest; `gen` writes it to a file so the harness can compare it with frames.mjs's before booting.
 *
 *   mdk-display info                       the fbdev mode: resolution, virtual size, bpp, stride
 *   mdk-display kd graphics|text           KDSETMODE on /dev/tty1 (fbcon stops/starts drawing)
 *   mdk-display fbwrite <raw> <w> <h>      writes a w×h XRGB8888 image (rows packed) to /dev/fb0
 *                                          at its stride, with write(2), and reports the time taken
 *   mdk-display gen <w> <h> <variant> <out>
 *                                          writes the test image (XRGB8888 little endian, rows
 *                                          packed), as frames.mjs's `raw` does
 *   mdk-display drm-mode <w> <h> <raw>     becomes DRM master, sets mode w×h on the connected
 *                                          connector with a dumb buffer holding the image, then
 *                                          waits for a line on stdin and exits (the kernel's fbdev
 *                                          emulation then restores its own mode)
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/fb.h>
#include <linux/kd.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <drm.h>
#include <drm_mode.h>

static void die(const char *what)
{
	printf("QE disp error %s errno=%d (%s)\n", what, errno, strerror(errno));
	fflush(stdout);
	exit(1);
}

static double now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* frames.mjs testPixel(): the test image's pixel at (x, y) of a w×h frame, as 0xRRGGBB. */
static uint32_t test_pixel(unsigned x, unsigned y, unsigned w, unsigned h, unsigned variant)
{
	static const uint32_t corners[4] = { 0xff0000, 0x00ff00, 0x0000ff, 0xffff00 };
	if (x == 0 || y == 0 || x == w - 1 || y == h - 1)
		return 0xffffff;
	int cx = x < 17 ? 0 : x >= w - 17 ? 1 : -1;
	int cy = y < 17 ? 0 : y >= h - 17 ? 2 : -1;
	if (cx >= 0 && cy >= 0)
		return corners[(cx + cy + variant) % 4];
	uint32_t r = x * 255 / (w - 1), g = y * 255 / (h - 1);
	uint32_t b = (((x >> 3) ^ (y >> 3) ^ variant) & 1) ? 0xc0 : 0x40;
	if (x % 64 == 0 || y % 64 == 0)
		b = 0xff;
	return r << 16 | g << 8 | b;
}

/* The test image as XRGB8888, little endian (the guest's byte order), rows packed. */
static void *test_image(unsigned w, unsigned h, unsigned variant)
{
	uint8_t *buf = malloc((size_t)w * h * 4), *p = buf;
	if (!buf || w < 2 || h < 2)
		die("test-image");
	for (unsigned y = 0; y < h; y++) {
		for (unsigned x = 0; x < w; x++, p += 4) {
			uint32_t v = test_pixel(x, y, w, h, variant);
			p[0] = v;
			p[1] = v >> 8;
			p[2] = v >> 16;
			p[3] = 0;
		}
	}
	return buf;
}

static void *read_image(const char *path, unsigned w, unsigned h)
{
	if (!strncmp(path, "test:", 5))
		return test_image(w, h, atoi(path + 5));
	size_t size = (size_t)w * h * 4, done = 0;
	char *buf = malloc(size);
	int fd = open(path, O_RDONLY);
	if (!buf || fd < 0)
		die("open-image");
	while (done < size) {
		ssize_t n = read(fd, buf + done, size - done);
		if (n <= 0)
			die("read-image");
		done += n;
	}
	close(fd);
	return buf;
}

static int fb_info(int fd, struct fb_var_screeninfo *var, struct fb_fix_screeninfo *fix)
{
	if (ioctl(fd, FBIOGET_VSCREENINFO, var) || ioctl(fd, FBIOGET_FSCREENINFO, fix))
		return -1;
	return 0;
}

static int cmd_info(void)
{
	struct fb_var_screeninfo var;
	struct fb_fix_screeninfo fix;
	int fd = open("/dev/fb0", O_RDONLY);
	if (fd < 0 || fb_info(fd, &var, &fix))
		die("fb-info");
	printf("QE disp fb xres=%u yres=%u vxres=%u vyres=%u bpp=%u stride=%u smem=%u id=%.16s\n", var.xres, var.yres,
	       var.xres_virtual, var.yres_virtual, var.bits_per_pixel, fix.line_length, fix.smem_len, fix.id);
	return 0;
}

static int cmd_kd(const char *mode)
{
	int fd = open("/dev/tty1", O_RDWR);
	if (fd < 0)
		die("open-tty1");
	if (ioctl(fd, KDSETMODE, strcmp(mode, "graphics") ? KD_TEXT : KD_GRAPHICS))
		die("kdsetmode");
	printf("QE disp kd %s\n", mode);
	return 0;
}

static int cmd_fbwrite(const char *path, unsigned w, unsigned h)
{
	struct fb_var_screeninfo var;
	struct fb_fix_screeninfo fix;
	char *img = read_image(path, w, h);
	int fd = open("/dev/fb0", O_RDWR);
	if (fd < 0 || fb_info(fd, &var, &fix))
		die("fb-open");
	if (var.bits_per_pixel != 32 || var.xres < w || var.yres < h || fix.line_length < w * 4) {
		printf("QE disp error fb-mode %ux%u bpp %u stride %u cannot hold %ux%u\n", var.xres, var.yres,
		       var.bits_per_pixel, fix.line_length, w, h);
		return 1;
	}
	double t0 = now_ms();
	if (fix.line_length == w * 4) {
		/* One write: rows are contiguous. */
		size_t size = (size_t)w * h * 4, done = 0;
		while (done < size) {
			ssize_t n = pwrite(fd, img + done, size - done, done);
			if (n <= 0)
				die("fb-write");
			done += n;
		}
	} else {
		for (unsigned y = 0; y < h; y++)
			if (pwrite(fd, img + (size_t)y * w * 4, w * 4, (off_t)y * fix.line_length) != (ssize_t)(w * 4))
				die("fb-write-row");
	}
	double t1 = now_ms();
	printf("QE disp fbwrite w=%u h=%u stride=%u write_us=%.0f\n", w, h, fix.line_length, (t1 - t0) * 1e3);
	close(fd);
	return 0;
}

static int cmd_drm_mode(unsigned w, unsigned h, const char *path)
{
	char *img = read_image(path, w, h);
	int fd = open("/dev/dri/card0", O_RDWR | O_CLOEXEC);
	if (fd < 0)
		die("open-card0");

	struct drm_mode_card_res res;
	memset(&res, 0, sizeof(res));
	if (ioctl(fd, DRM_IOCTL_MODE_GETRESOURCES, &res))
		die("getresources");
	uint32_t *crtcs = calloc(res.count_crtcs + 1, 4), *conns = calloc(res.count_connectors + 1, 4);
	uint32_t *encs = calloc(res.count_encoders + 1, 4), *fbs = calloc(res.count_fbs + 1, 4);
	res.crtc_id_ptr = (uintptr_t)crtcs;
	res.connector_id_ptr = (uintptr_t)conns;
	res.encoder_id_ptr = (uintptr_t)encs;
	res.fb_id_ptr = (uintptr_t)fbs;
	if (ioctl(fd, DRM_IOCTL_MODE_GETRESOURCES, &res))
		die("getresources-2");

	struct drm_mode_modeinfo mode;
	uint32_t conn_id = 0, crtc_id = 0;
	for (unsigned c = 0; c < res.count_connectors && !conn_id; c++) {
		struct drm_mode_get_connector conn;
		memset(&conn, 0, sizeof(conn));
		conn.connector_id = conns[c];
		if (ioctl(fd, DRM_IOCTL_MODE_GETCONNECTOR, &conn)) /* count_modes 0: probes */
			die("getconnector");
		if (conn.connection != 1 || conn.count_modes == 0)
			continue;
		struct drm_mode_modeinfo *modes = calloc(conn.count_modes, sizeof(*modes));
		uint32_t *props = calloc(conn.count_props + 1, 4), *encoders = calloc(conn.count_encoders + 1, 4);
		uint64_t *values = calloc(conn.count_props + 1, 8);
		conn.modes_ptr = (uintptr_t)modes;
		conn.props_ptr = (uintptr_t)props;
		conn.prop_values_ptr = (uintptr_t)values;
		conn.encoders_ptr = (uintptr_t)encoders;
		if (ioctl(fd, DRM_IOCTL_MODE_GETCONNECTOR, &conn))
			die("getconnector-2");
		printf("QE disp connector %u modes=%u:", conn.connector_id, conn.count_modes);
		for (unsigned m = 0; m < conn.count_modes; m++)
			printf(" %ux%u", modes[m].hdisplay, modes[m].vdisplay);
		printf("\n");
		for (unsigned m = 0; m < conn.count_modes && !conn_id; m++) {
			if (modes[m].hdisplay == w && modes[m].vdisplay == h) {
				mode = modes[m];
				conn_id = conn.connector_id;
			}
		}
		if (!conn_id)
			continue;
		struct drm_mode_get_encoder enc;
		memset(&enc, 0, sizeof(enc));
		enc.encoder_id = conn.encoder_id ? conn.encoder_id : encoders[0];
		if (ioctl(fd, DRM_IOCTL_MODE_GETENCODER, &enc))
			die("getencoder");
		crtc_id = enc.crtc_id;
		for (unsigned i = 0; !crtc_id && i < res.count_crtcs; i++)
			if (enc.possible_crtcs & (1u << i))
				crtc_id = crtcs[i];
	}
	if (!conn_id || !crtc_id) {
		printf("QE disp error no-mode %ux%u (connector %u crtc %u)\n", w, h, conn_id, crtc_id);
		return 1;
	}

	struct drm_mode_create_dumb dumb;
	memset(&dumb, 0, sizeof(dumb));
	dumb.width = w;
	dumb.height = h;
	dumb.bpp = 32;
	if (ioctl(fd, DRM_IOCTL_MODE_CREATE_DUMB, &dumb))
		die("create-dumb");
	struct drm_mode_map_dumb map;
	memset(&map, 0, sizeof(map));
	map.handle = dumb.handle;
	if (ioctl(fd, DRM_IOCTL_MODE_MAP_DUMB, &map))
		die("map-dumb");
	char *pixels = mmap(NULL, dumb.size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, map.offset);
	if (pixels == MAP_FAILED)
		die("mmap-dumb");
	for (unsigned y = 0; y < h; y++)
		memcpy(pixels + (size_t)y * dumb.pitch, img + (size_t)y * w * 4, w * 4);

	struct drm_mode_fb_cmd fb;
	memset(&fb, 0, sizeof(fb));
	fb.width = w;
	fb.height = h;
	fb.pitch = dumb.pitch;
	fb.bpp = 32;
	fb.depth = 24;
	fb.handle = dumb.handle;
	if (ioctl(fd, DRM_IOCTL_MODE_ADDFB, &fb))
		die("addfb");
	struct drm_mode_crtc crtc;
	memset(&crtc, 0, sizeof(crtc));
	crtc.crtc_id = crtc_id;
	crtc.fb_id = fb.fb_id;
	crtc.set_connectors_ptr = (uintptr_t)&conn_id;
	crtc.count_connectors = 1;
	crtc.mode = mode;
	crtc.mode_valid = 1;
	double t0 = now_ms();
	if (ioctl(fd, DRM_IOCTL_MODE_SETCRTC, &crtc))
		die("setcrtc");
	printf("QE disp drm-mode w=%u h=%u pitch=%u connector=%u crtc=%u setcrtc_us=%.0f\n", w, h, dumb.pitch, conn_id,
	       crtc_id, (now_ms() - t0) * 1e3);
	fflush(stdout);

	/* Hold the mode until told to go on; closing the device hands the display back to fbdev. */
	char c;
	while (read(0, &c, 1) == 1 && c != '\n')
		;
	munmap(pixels, dumb.size);
	close(fd);
	printf("QE disp drm-released\n");
	return 0;
}

static int cmd_gen(unsigned w, unsigned h, unsigned variant, const char *out)
{
	char *img = test_image(w, h, variant);
	size_t size = (size_t)w * h * 4, done = 0;
	int fd = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd < 0)
		die("open-out");
	while (done < size) {
		ssize_t n = write(fd, img + done, size - done);
		if (n <= 0)
			die("write-out");
		done += n;
	}
	close(fd);
	return 0;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc == 2 && !strcmp(argv[1], "info"))
		return cmd_info();
	if (argc == 3 && !strcmp(argv[1], "kd"))
		return cmd_kd(argv[2]);
	if (argc == 5 && !strcmp(argv[1], "fbwrite"))
		return cmd_fbwrite(argv[2], atoi(argv[3]), atoi(argv[4]));
	if (argc == 5 && !strcmp(argv[1], "drm-mode"))
		return cmd_drm_mode(atoi(argv[2]), atoi(argv[3]), argv[4]);
	if (argc == 6 && !strcmp(argv[1], "gen"))
		return cmd_gen(atoi(argv[2]), atoi(argv[3]), atoi(argv[4]), argv[5]);
	fprintf(stderr, "usage: mdk-display info | kd graphics|text | fbwrite <raw|test:N> <w> <h> | drm-mode <w> <h> <raw|test:N> | gen <w> <h> <variant> <out>\n");
	return 2;
}
