/* warmvm-identity: the restored guest takes its own identity. Runs as root in the guest, started
 * by /sbin/init of a snapshot template (warmvm.template=1) once its shared boot is done.
 *
 *   warmvm-identity FWCFG_RAW OUT_ENV
 *
 * It says "warmvm: snapshot point" on the console, then waits (5 ms polls, no fork, nothing else
 * running) until the fw_cfg entry FWCFG_RAW holds an identity instead of the template's
 * placeholder. The controller saves the template while it waits; a restored copy finds its own
 * VM's identity there, because fw_cfg content comes from the QEMU that restores it and is not part
 * of the saved state. Then, before anything else may draw a random number:
 *   - the kernel's RNG gets 64 fresh bytes from the host (RNDADDENTROPY) and is reseeded
 *     (RNDRESEEDCRNG): this kernel has no VMGENID driver, and every copy of a snapshot starts
 *     with the template's RNG state;
 *   - the wall clock is set to the host's;
 *   - the host name is set, the SSH host key is written for dropbear (0600, a new file);
 *   - OUT_ENV gets the network settings, as KEY=VALUE lines, for /sbin/init.
 * Any failure exits non-zero: init then powers the guest off, so the controller boots it cold,
 * never runs a clone.
 *
 * The identity entry has a fixed size (IDENTITY_SIZE, zero-padded): the guest's fw_cfg driver
 * caches every entry's size when it probes, in the template.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/random.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#define IDENTITY_SIZE 4096
#define MAGIC "warmvm-identity\n"
#define SEED_BYTES 64
#define HOSTKEY_PATH "/run/dropbear_ed25519_host_key"

static int fail(const char *what) {
	fprintf(stderr, "warmvm-identity: %s: %s\n", what, errno ? strerror(errno) : "invalid");
	return 1;
}

static const char *field(char *text, const char *key) {
	size_t n = strlen(key);
	for (char *line = text; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL)
		if (strncmp(line, key, n) == 0 && line[n] == '=')
			return line + n + 1;
	return NULL;
}

/* A field's value up to its newline, copied into out (at most size-1 bytes); only characters a
 * host name, an address or a hex string may hold, so that OUT_ENV is safe for `read`. */
static int value(char *text, const char *key, char *out, size_t size, int required) {
	const char *v = field(text, key);
	size_t i = 0;
	out[0] = 0;
	if (!v) {
		errno = 0;
		return required ? -1 : 0;
	}
	for (; v[i] && v[i] != '\n'; i++) {
		char c = v[i];
		if (i + 1 >= size || !(c == '.' || c == ':' || c == '/' || c == '-' || c == ',' ||
				       (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))) {
			errno = 0;
			return -1;
		}
		out[i] = c;
	}
	out[i] = 0;
	return 0;
}

static int unhex(const char *hex, unsigned char *out, size_t max) {
	size_t n = strlen(hex);
	if (n % 2 || n / 2 > max)
		return -1;
	for (size_t i = 0; i < n / 2; i++) {
		unsigned int b;
		if (sscanf(hex + 2 * i, "%2x", &b) != 1)
			return -1;
		out[i] = (unsigned char)b;
	}
	return (int)(n / 2);
}

static int wait_identity(const char *path, char *text) {
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return fail(path);
	printf("warmvm: snapshot point\n");
	fflush(stdout);
	struct timespec poll = {0, 5 * 1000 * 1000};
	char head[sizeof(MAGIC) - 1];
	for (;;) {
		if (pread(fd, head, sizeof head, 0) != (ssize_t)sizeof head)
			return fail("reading the identity entry");
		if (memcmp(head, MAGIC, sizeof head) == 0)
			break;
		nanosleep(&poll, NULL);
	}
	ssize_t got = pread(fd, text, IDENTITY_SIZE, 0);
	close(fd);
	if (got != IDENTITY_SIZE)
		return fail("reading the identity");
	text[IDENTITY_SIZE] = 0;
	return 0;
}

static int reseed(char *text) {
	char hex[2 * SEED_BYTES + 1];
	struct {
		struct rand_pool_info info;
		unsigned char buf[SEED_BYTES];
	} pool;
	if (value(text, "seed", hex, sizeof hex, 1) || unhex(hex, pool.buf, SEED_BYTES) != SEED_BYTES)
		return fail("seed");
	pool.info.entropy_count = SEED_BYTES * 8;
	pool.info.buf_size = SEED_BYTES;
	int fd = open("/dev/urandom", O_WRONLY | O_CLOEXEC);
	if (fd < 0 || ioctl(fd, RNDADDENTROPY, &pool.info) || ioctl(fd, RNDRESEEDCRNG))
		return fail("reseeding the kernel's RNG");
	close(fd);
	explicit_bzero(&pool, sizeof pool);
	return 0;
}

static int set_clock(char *text) {
	char ns[32];
	if (value(text, "time", ns, sizeof ns, 1))
		return fail("time");
	long long t = strtoll(ns, NULL, 10);
	struct timespec now = {t / 1000000000LL, t % 1000000000LL};
	return clock_settime(CLOCK_REALTIME, &now) ? fail("setting the clock") : 0;
}

static int host_key(char *text) {
	char hex[1024];
	unsigned char key[512];
	int n;
	if (value(text, "hostkey", hex, sizeof hex, 1) || (n = unhex(hex, key, sizeof key)) <= 0)
		return fail("hostkey");
	unlink(HOSTKEY_PATH);
	int fd = open(HOSTKEY_PATH, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0 || write(fd, key, n) != n || close(fd))
		return fail(HOSTKEY_PATH);
	explicit_bzero(key, sizeof key);
	return 0;
}

static int env_out(char *text, const char *out) {
	static const char *keys[][2] = {{"hostname", "HN"}, {"ip", "IP"}, {"gw", "GW"}, {"mac", "MAC"}, {"dns", "DNS"}};
	char v[256];
	FILE *f = fopen(out, "wx");
	if (!f)
		return fail(out);
	for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
		if (value(text, keys[i][0], v, sizeof v, i < 2))
			return fail(keys[i][0]);
		fprintf(f, "%s=%s\n", keys[i][1], v);
	}
	if (value(text, "hostname", v, sizeof v, 1) || sethostname(v, strlen(v)))
		return fail("setting the host name");
	return fclose(f) ? fail(out) : 0;
}

int main(int argc, char **argv) {
	static char text[IDENTITY_SIZE + 1];
	if (argc != 3) {
		fprintf(stderr, "usage: warmvm-identity FWCFG_RAW OUT_ENV\n");
		return 2;
	}
	if (wait_identity(argv[1], text) || reseed(text) || set_clock(text) || host_key(text) || env_out(text, argv[2]))
		return 1;
	explicit_bzero(text, sizeof text);
	return 0;
}
