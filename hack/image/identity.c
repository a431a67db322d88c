/* warmvm-identity: the restored guest takes its own identity. Runs as root in the guest, started
 * by /sbin/init of a snapshot template (warmvm.template=1) once its shared boot is done.
 *
 *   warmvm-identity FWCFG_RAW OUT_ENV [DRIVER:DEVICE ...]
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
 *   - the virtio devices the template let go (DRIVER:DEVICE, e.g. virtio_net:virtio2) are bound
 *     again, so they are probed afresh from the restoring QEMU (its disk and its size);
 *   - the NIC gets the VM's MAC, address and default route (ioctls: no fork of ip(8), which costs
 *     tens of ms each under TCG), and lo comes up;
 *   - OUT_ENV gets what /sbin/init still uses (HN, IP, GW, DNS), as KEY=VALUE lines.
 * Any failure exits non-zero: init then powers the guest off, so the controller boots it cold,
 * never runs a clone.
 *
 * The identity entry has a fixed size (IDENTITY_SIZE, zero-padded): the guest's fw_cfg driver
 * caches every entry's size when it probes, in the template.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <arpa/inet.h>
#include <dirent.h>
#include <linux/random.h>
#include <linux/sockios.h>
#include <net/if.h>
#include <net/if_arp.h>
#include <net/route.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
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

/* The host's clock when it wrote the identity, which is older by QEMU's start and the state's load
 * (a few hundred ms; seconds on a loaded host). The RTC, which QEMU keeps on the host's clock
 * across the restore, bounds that: when it is a whole second or more ahead, its reading (the
 * second begun, so +0.5 s) is the better one. */
static int set_clock(char *text) {
	char ns[32];
	if (value(text, "time", ns, sizeof ns, 1))
		return fail("time");
	long long t = strtoll(ns, NULL, 10);
	FILE *rtc = fopen("/sys/class/rtc/rtc0/since_epoch", "re");
	long long rtc_s = 0;
	if (rtc) {
		if (fscanf(rtc, "%lld", &rtc_s) != 1)
			rtc_s = 0;
		fclose(rtc);
	}
	if (rtc_s * 1000000000LL > t + 1000000000LL)
		t = rtc_s * 1000000000LL + 500000000LL;
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
	static const char *keys[][2] = {{"hostname", "HN"}, {"ip", "IP"}, {"gw", "GW"}, {"dns", "DNS"}};
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

/* Binds each DRIVER:DEVICE again; the name of the network interface of a virtio_net one goes to nic. */
static int bind_devices(int n, char **devices, char *nic, size_t size) {
	for (int i = 0; i < n; i++) {
		char *colon = strchr(devices[i], ':'), path[256];
		if (!colon || strchr(devices[i], '/')) {
			errno = 0;
			return fail(devices[i]);
		}
		*colon = 0;
		snprintf(path, sizeof path, "/sys/bus/virtio/drivers/%s/bind", devices[i]);
		int fd = open(path, O_WRONLY | O_CLOEXEC);
		if (fd < 0 || write(fd, colon + 1, strlen(colon + 1)) < 0 || close(fd))
			return fail(path);
		if (strcmp(devices[i], "virtio_net") == 0) {
			snprintf(path, sizeof path, "/sys/bus/virtio/devices/%s/net", colon + 1);
			DIR *dir = opendir(path);
			struct dirent *e;
			while (dir && (e = readdir(dir)))
				if (e->d_name[0] != '.' && strlen(e->d_name) < size)
					memcpy(nic, e->d_name, strlen(e->d_name) + 1);
			if (dir)
				closedir(dir);
		}
	}
	return 0;
}

static int if_ioctl(int sock, const char *name, unsigned long request, struct ifreq *ifr) {
	snprintf(ifr->ifr_name, IFNAMSIZ, "%s", name);
	return ioctl(sock, request, ifr);
}

static int up(int sock, const char *name) {
	struct ifreq ifr = {0};
	if (if_ioctl(sock, name, SIOCGIFFLAGS, &ifr))
		return -1;
	ifr.ifr_flags |= IFF_UP;
	return if_ioctl(sock, name, SIOCSIFFLAGS, &ifr);
}

static void set_addr(struct sockaddr *sa, struct in_addr a) {
	struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr = a};
	memcpy(sa, &sin, sizeof sin);
}

/* The NIC configured as `ip link set address; ip addr add; ip link set up; ip route add default` would. */
static int network(char *text, const char *nic) {
	char mac[32], ip[32], gw[32], *slash;
	struct in_addr addr, gateway;
	struct ifreq ifr = {0};
	unsigned int m[6];
	if (value(text, "mac", mac, sizeof mac, 1) || value(text, "ip", ip, sizeof ip, 1) ||
	    value(text, "gw", gw, sizeof gw, 0))
		return fail("network settings");
	int sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (sock < 0 || up(sock, "lo"))
		return fail("lo");
	if (!*nic) {
		errno = 0;
		return fail("no network interface");
	}
	if (sscanf(mac, "%x:%x:%x:%x:%x:%x", &m[0], &m[1], &m[2], &m[3], &m[4], &m[5]) != 6)
		return fail("mac");
	ifr.ifr_hwaddr.sa_family = ARPHRD_ETHER;
	for (int i = 0; i < 6; i++)
		ifr.ifr_hwaddr.sa_data[i] = (char)m[i];
	if (if_ioctl(sock, nic, SIOCSIFHWADDR, &ifr))
		return fail("setting the MAC");
	slash = strchr(ip, '/');
	int prefix = slash ? atoi(slash + 1) : 32;
	if (slash)
		*slash = 0;
	if (!inet_aton(ip, &addr) || prefix < 0 || prefix > 32)
		return fail("ip");
	set_addr(&ifr.ifr_addr, addr);
	if (if_ioctl(sock, nic, SIOCSIFADDR, &ifr))
		return fail("setting the address");
	set_addr(&ifr.ifr_netmask, (struct in_addr){htonl(prefix ? 0xffffffffu << (32 - prefix) : 0)});
	if (if_ioctl(sock, nic, SIOCSIFNETMASK, &ifr) || up(sock, nic))
		return fail("bringing the interface up");
	if (*gw) {
		struct rtentry route = {0};
		if (!inet_aton(gw, &gateway))
			return fail("gw");
		set_addr(&route.rt_dst, (struct in_addr){0});
		set_addr(&route.rt_genmask, (struct in_addr){0});
		set_addr(&route.rt_gateway, gateway);
		route.rt_flags = RTF_UP | RTF_GATEWAY;
		route.rt_dev = (char *)nic;
		if (ioctl(sock, SIOCADDRT, &route))
			return fail("adding the default route");
	}
	close(sock);
	return 0;
}

int main(int argc, char **argv) {
	static char text[IDENTITY_SIZE + 1];
	char nic[IFNAMSIZ] = "";
	if (argc < 3) {
		fprintf(stderr, "usage: warmvm-identity FWCFG_RAW OUT_ENV [DRIVER:DEVICE ...]\n");
		return 2;
	}
	if (wait_identity(argv[1], text) || reseed(text) || set_clock(text) || host_key(text) ||
	    env_out(text, argv[2]) || bind_devices(argc - 3, argv + 3, nic, sizeof nic) || network(text, nic))
		return 1;
	explicit_bzero(text, sizeof text);
	return 0;
}
