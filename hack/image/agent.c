/* warmvm-agent: the guest's end of the control channel, a virtio-serial port named
 * org.warmvm.control whose host end is a UNIX socket of the controller's (controller/adapters/guest/).
 * Started early by /sbin/init and restarted if it exits; in a snapshot template too, before the
 * snapshot point, so that every restored copy has it running.
 *
 * Frames, both ways: type (1 byte), payload length (4 bytes, big-endian, at most 64 KiB), payload.
 * The agent answers; it never speaks first (no host may be listening):
 *   H HELLO   version (1) + a 16-byte nonce  -> HELLO, the same payload. A new session: a command a
 *                                              previous host started is killed, queued output dropped
 *   S STATUS  (empty)                        -> STATUS, one byte: bit 0 sshd listens on port 22,
 *                                              bit 1 the work disk is mounted on /root, bit 2 init
 *                                              finished its boot (/run/warmvm-ready: network set up)
 *   E EXEC    argv, each NUL-terminated      -> OUT frames (1 byte stream: 1 stdout, 2 stderr; then
 *                                              the data), then EXIT (2 bytes: 0 and the exit code, or
 *                                              1 and the signal that killed it)
 * A command runs as root in /root, in a session of its own, stdin /dev/null. It is killed, with its
 * process group, when the host goes away or starts a new session. Its output is read only as fast
 * as the host takes it (a full queue stops the reads; the command then blocks on its pipe).
 * A frame the agent cannot read makes it drop all input until the host goes away.
 *
 * While no host is connected the port reports a hang-up; the agent then sleeps in sigtimedwait
 * until the port's SIGIO (O_ASYNC) says a host connected: an idle guest pays nothing for it.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PORT_NAME "org.warmvm.control"
#define PORTS "/sys/class/virtio-ports"
#define DEVICES "/sys/bus/virtio/drivers/virtio_console"
#define NO_DEVICE 3 /* exit status: no channel device (a QEMU started without one): not respawned */
#define MODULES "/lib/modules/channel-order"
#define READY_MARK "/run/warmvm-agent.ready" /* the port is open: a template may be saved */
#define HEADER 5
#define MAX_PAYLOAD (64 * 1024)
#define CHUNK (16 * 1024)                    /* a command's output read at a time */
#define OUT_CAP (4 * (HEADER + 1 + CHUNK))   /* frames queued for the host */
#define VERSION 1
#define NONCE 16
#define MAX_ARGS 4096

enum { HELLO = 'H', STATUS = 'S', EXEC = 'E', OUT = 'O', EXIT = 'X' };

static int port = -1;
static unsigned char in[HEADER + MAX_PAYLOAD];
static size_t in_len;
static int discarding; /* set by a frame the agent cannot read: input is dropped until the host goes */
static unsigned char out[OUT_CAP];
static size_t out_len;

static struct {
	pid_t pid; /* 0: no command */
	int pidfd;
	int pipe[3]; /* [1] its stdout, [2] its stderr (read ends; -1 once closed) */
	int exited;
	int status;
} cmd = {0, -1, {-1, -1, -1}, 0, 0};

static char *env[] = {"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "USER=root", "LOGNAME=root",
		      "SHELL=/bin/sh", NULL};

static void warn(const char *what) {
	fprintf(stderr, "warmvm-agent: %s: %s\n", what, strerror(errno));
}

/* One frame, queued whole (the port takes each write as one buffer, so frames are written one at a
 * time and never split). -1 when the queue has no room. */
static int queue(int type, const void *a, size_t alen, const void *b, size_t blen) {
	size_t n = alen + blen;
	if (out_len + HEADER + n > sizeof out)
		return -1;
	unsigned char *p = out + out_len;
	p[0] = (unsigned char)type;
	p[1] = (unsigned char)(n >> 24);
	p[2] = (unsigned char)(n >> 16);
	p[3] = (unsigned char)(n >> 8);
	p[4] = (unsigned char)n;
	memcpy(p + HEADER, a, alen);
	if (blen)
		memcpy(p + HEADER + alen, b, blen);
	out_len += HEADER + n;
	return 0;
}

static size_t frame_len(const unsigned char *p) {
	return HEADER + ((size_t)p[1] << 24 | (size_t)p[2] << 16 | (size_t)p[3] << 8 | p[4]);
}

/* Writes queued frames, one per write, until the port would block. */
static void flush(void) {
	while (out_len) {
		size_t n = frame_len(out);
		ssize_t w = write(port, out, n);
		if (w == 0 || (w < 0 && (errno == EAGAIN || errno == EINTR)))
			return;
		if (w < 0) {
			warn("writing the port");
			exit(1);
		}
		memmove(out, out + n, out_len - n); /* w == n: the port takes up to 32 KiB at once */
		out_len -= n;
	}
}

static void close_pipe(int s) {
	if (cmd.pipe[s] >= 0)
		close(cmd.pipe[s]);
	cmd.pipe[s] = -1;
}

/* The command's end: with `kill_it`, its whole process group is killed first (the host left). */
static void end_command(int kill_it) {
	if (!cmd.pid)
		return;
	if (kill_it)
		kill(-cmd.pid, SIGKILL);
	if (!cmd.exited)
		waitpid(cmd.pid, NULL, 0);
	close_pipe(1);
	close_pipe(2);
	if (cmd.pidfd >= 0)
		close(cmd.pidfd);
	cmd.pid = 0;
	cmd.pidfd = -1;
	cmd.exited = 0;
}

static void reply_failure(const char *what, int err, int code) {
	char msg[512];
	int n = snprintf(msg, sizeof msg, "warmvm-agent: %s: %s\n", what, strerror(err));
	unsigned char stream = 2, exit[2] = {0, (unsigned char)code};
	queue(OUT, &stream, 1, msg, n < (int)sizeof msg ? (size_t)n : sizeof msg - 1);
	queue(EXIT, exit, 2, NULL, 0);
}

static void start_command(unsigned char *p, size_t n) {
	char *argv[MAX_ARGS + 1];
	int argc = 0, o[2], e[2], rc;
	for (size_t i = 0; i < n; i += strlen((char *)p + i) + 1) /* at most MAX_ARGS (handle) */
		argv[argc++] = (char *)p + i;
	argv[argc] = NULL;
	if (pipe2(o, O_CLOEXEC) || pipe2(e, O_CLOEXEC)) {
		reply_failure("pipe", errno, 126);
		return;
	}
	posix_spawn_file_actions_t fa;
	posix_spawnattr_t attr;
	sigset_t none, all;
	sigemptyset(&none);
	sigfillset(&all);
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
	posix_spawn_file_actions_adddup2(&fa, o[1], 1);
	posix_spawn_file_actions_adddup2(&fa, e[1], 2);
	posix_spawn_file_actions_addchdir_np(&fa, "/root");
	posix_spawnattr_init(&attr);
	posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
	posix_spawnattr_setsigmask(&attr, &none);
	posix_spawnattr_setsigdefault(&attr, &all);
	rc = posix_spawnp(&cmd.pid, argv[0], &fa, &attr, argv, env);
	posix_spawn_file_actions_destroy(&fa);
	posix_spawnattr_destroy(&attr);
	close(o[1]);
	close(e[1]);
	if (rc) {
		cmd.pid = 0;
		close(o[0]);
		close(e[0]);
		reply_failure(argv[0], rc, rc == ENOENT ? 127 : 126);
		return;
	}
	cmd.pipe[1] = o[0];
	cmd.pipe[2] = e[0];
	fcntl(o[0], F_SETFL, O_NONBLOCK);
	fcntl(e[0], F_SETFL, O_NONBLOCK);
	cmd.pidfd = (int)syscall(SYS_pidfd_open, cmd.pid, 0);
	cmd.exited = 0;
}

/* Whether a line of `path` matches: read in pieces, no allocation, no fork. */
static int any_line(const char *path, int (*match)(const char *line)) {
	char buf[8192];
	size_t have = 0;
	int found = 0, fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	for (;;) {
		ssize_t n = read(fd, buf + have, sizeof buf - 1 - have);
		if (n <= 0)
			break;
		have += (size_t)n;
		buf[have] = 0;
		char *line = buf, *nl;
		while (!found && (nl = strchr(line, '\n'))) {
			*nl = 0;
			found = match(line);
			line = nl + 1;
		}
		if (found)
			break;
		have -= (size_t)(line - buf);
		if (have == sizeof buf - 1) /* a line longer than the buffer: skipped */
			have = 0;
		memmove(buf, line, have);
	}
	close(fd);
	return found;
}

static int ssh_listens(const char *line) { /* "sl local rem st ...", local ADDR:0016, st 0A = LISTEN */
	char local[64], st[4];
	if (sscanf(line, "%*s %63s %*s %3s", local, st) != 2)
		return 0;
	size_t n = strlen(local);
	return n > 5 && strcmp(local + n - 5, ":0016") == 0 && strcmp(st, "0A") == 0;
}

static int work_mounted(const char *line) {
	char where[256], type[32];
	return sscanf(line, "%*s %255s %31s", where, type) == 2 && strcmp(where, "/root") == 0 &&
	       strcmp(type, "ext4") == 0;
}

static void answer_status(void) {
	unsigned char flags = 0;
	if (any_line("/proc/net/tcp", ssh_listens) || any_line("/proc/net/tcp6", ssh_listens))
		flags |= 1;
	if (any_line("/proc/mounts", work_mounted))
		flags |= 2;
	if (access("/run/warmvm-ready", F_OK) == 0)
		flags |= 4;
	queue(STATUS, &flags, 1, NULL, 0);
}

/* One frame from the host; 0, or -1 for one the agent cannot read. */
static int handle(int type, unsigned char *p, size_t n) {
	switch (type) {
	case HELLO:
		if (n != 1 + NONCE || p[0] != VERSION)
			return -1;
		end_command(1);
		out_len = 0;
		return queue(HELLO, p, n, NULL, 0);
	case STATUS:
		if (n != 0)
			return -1;
		answer_status();
		return 0;
	case EXEC: {
		size_t args = 0;
		for (size_t i = 0; i < n; i++)
			args += p[i] == 0;
		if (cmd.pid || n == 0 || p[n - 1] != 0 || p[0] == 0 || args > MAX_ARGS)
			return -1;
		start_command(p, n);
		return 0;
	}
	}
	return -1;
}

/* The host left: its command is killed, what it sent and what was queued for it is dropped. */
static void disconnected(void) {
	end_command(1);
	out_len = in_len = 0;
	discarding = 0;
	while (read(port, in, sizeof in) > 0) /* left by the host that went (0: nothing more) */
		;
}

/* Until a host is connected: woken by the port's SIGIO, or every few seconds in case one was missed. */
static void wait_host(void) {
	sigset_t io;
	struct timespec nap = {5, 0};
	sigemptyset(&io);
	sigaddset(&io, SIGIO);
	for (;;) {
		struct pollfd p = {port, 0, 0};
		if (poll(&p, 1, 0) >= 0 && !(p.revents & POLLHUP))
			return;
		sigtimedwait(&io, NULL, &nap);
	}
}

static void read_host(void) {
	ssize_t n = read(port, in + in_len, sizeof in - in_len);
	if (n == 0) {
		disconnected();
		wait_host();
		return;
	}
	if (n < 0) {
		if (errno == EAGAIN || errno == EINTR)
			return;
		warn("reading the port");
		exit(1);
	}
	if (discarding)
		return;
	in_len += (size_t)n;
	while (in_len >= HEADER) {
		size_t len = frame_len(in) - HEADER;
		if (len > MAX_PAYLOAD || (in_len >= HEADER + len && handle(in[0], in + HEADER, len))) {
			discarding = 1;
			in_len = 0;
			end_command(1);
			return;
		}
		if (in_len < HEADER + len)
			break;
		memmove(in, in + HEADER + len, in_len - HEADER - len);
		in_len -= HEADER + len;
	}
}

/* Whether the queue holds one more chunk of output. */
static int has_room(void) {
	return out_len + HEADER + 1 + CHUNK <= sizeof out;
}

/* Reads the command's stream `s` into an OUT frame; after its exit, an empty pipe is closed. */
static void read_output(int s) {
	static unsigned char buf[CHUNK];
	unsigned char stream = (unsigned char)s;
	ssize_t n = read(cmd.pipe[s], buf, sizeof buf);
	if (n > 0)
		queue(OUT, &stream, 1, buf, (size_t)n);
	else if (n == 0 || (errno != EAGAIN && errno != EINTR) || cmd.exited)
		close_pipe(s);
}

static void load_modules(void) {
	char name[64], path[128];
	FILE *f = fopen(MODULES, "re");
	while (f && fscanf(f, "%63s", name) == 1) {
		snprintf(path, sizeof path, "/lib/modules/%s.ko", name);
		int fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0 || (syscall(SYS_finit_module, fd, "", 0) && errno != EEXIST))
			warn(path);
		if (fd >= 0)
			close(fd);
	}
	if (f)
		fclose(f);
}

/* Whether a virtio-serial device is bound (probed while its module loaded: no wait). */
static int have_device(void) {
	DIR *d = opendir(DEVICES);
	struct dirent *e;
	int found = 0;
	while (d && !found && (e = readdir(d)))
		found = strncmp(e->d_name, "virtio", 6) == 0;
	if (d)
		closedir(d);
	return found;
}

/* The port's device (vportNpM), found by its name in sysfs, within `tries` 10 ms polls (the host
 * adds ports just after the device is probed). */
static int find_port(char *dev, size_t size, int tries) {
	struct timespec tick = {0, 10 * 1000 * 1000};
	for (int i = 0; i < tries; i++, nanosleep(&tick, NULL)) {
		DIR *d = opendir(PORTS);
		struct dirent *e;
		while (d && (e = readdir(d))) {
			char path[300], name[64] = "";
			if (e->d_name[0] == '.')
				continue;
			snprintf(path, sizeof path, PORTS "/%s/name", e->d_name);
			FILE *f = fopen(path, "re");
			if (f && fgets(name, sizeof name, f))
				name[strcspn(name, "\n")] = 0;
			if (f)
				fclose(f);
			if (strcmp(name, PORT_NAME) == 0 && strlen(e->d_name) < size) {
				memcpy(dev, e->d_name, strlen(e->d_name) + 1);
				closedir(d);
				return 0;
			}
		}
		if (d)
			closedir(d);
	}
	return -1;
}

/* /dev/NAME as devtmpfs makes it; else a node of our own in /run, made from sysfs's major:minor. */
static int open_port(const char *name) {
	char path[300];
	unsigned int major, minor;
	struct timespec tick = {0, 10 * 1000 * 1000};
	snprintf(path, sizeof path, "/dev/%s", name);
	for (int i = 0; i < 50; i++, nanosleep(&tick, NULL)) {
		int fd = open(path, O_RDWR | O_NONBLOCK | O_CLOEXEC);
		if (fd >= 0 || errno != ENOENT)
			return fd;
	}
	snprintf(path, sizeof path, PORTS "/%s/dev", name);
	FILE *f = fopen(path, "re");
	int ok = f && fscanf(f, "%u:%u", &major, &minor) == 2;
	if (f)
		fclose(f);
	unlink("/run/warmvm-port");
	if (!ok || mknod("/run/warmvm-port", S_IFCHR | 0600, makedev(major, minor)))
		return -1;
	return open("/run/warmvm-port", O_RDWR | O_NONBLOCK | O_CLOEXEC);
}

int main(void) {
	char name[64];
	sigset_t io;
	signal(SIGPIPE, SIG_IGN);
	sigemptyset(&io);
	sigaddset(&io, SIGIO);
	sigprocmask(SIG_BLOCK, &io, NULL); /* taken by sigtimedwait only */
	setenv("PATH", env[0] + 5, 1);     /* posix_spawnp searches the agent's own PATH */
	if (access(PORTS, F_OK))
		load_modules();
	if (!have_device()) {
		fprintf(stderr, "warmvm-agent: no virtio-serial device: no control channel\n");
		return NO_DEVICE;
	}
	if (find_port(name, sizeof name, 1000)) {
		fprintf(stderr, "warmvm-agent: no virtio port named " PORT_NAME "\n");
		return 1;
	}
	port = open_port(name);
	if (port < 0) {
		warn(name);
		return 1;
	}
	if (fcntl(port, F_SETOWN, getpid()) || fcntl(port, F_SETFL, O_NONBLOCK | O_ASYNC)) {
		warn("O_ASYNC");
		return 1;
	}
	close(open(READY_MARK, O_WRONLY | O_CREAT | O_CLOEXEC, 0644));
	wait_host();
	for (;;) {
		struct pollfd fds[4] = {{port, POLLIN | (out_len ? POLLOUT : 0), 0}};
		int nfds = 1, at[3] = {-1, -1, -1}, room = has_room();
		for (int s = 1; s <= 2; s++)
			if (cmd.pipe[s] >= 0 && room) {
				at[s] = nfds;
				fds[nfds++] = (struct pollfd){cmd.pipe[s], POLLIN, 0};
			}
		if (cmd.pid && !cmd.exited && cmd.pidfd >= 0) {
			at[0] = nfds;
			fds[nfds++] = (struct pollfd){cmd.pidfd, POLLIN, 0};
		}
		/* once the command exited, what its pipes hold is read at once (no wait for their EOF:
		 * a process it left behind may keep them open) */
		int drain = cmd.pid && cmd.exited && room && (cmd.pipe[1] >= 0 || cmd.pipe[2] >= 0);
		int unwatched = cmd.pid && !cmd.exited && cmd.pidfd < 0; /* no pidfd: its exit is polled for */
		if (poll(fds, (nfds_t)nfds, drain ? 0 : unwatched ? 50 : -1) < 0 && errno != EINTR) {
			warn("poll");
			return 1;
		}
		if (fds[0].revents & POLLOUT)
			flush();
		for (int s = 1; s <= 2; s++) /* room checked again: one stream's chunk may have taken it */
			if (cmd.pipe[s] >= 0 && has_room() && (drain || (at[s] >= 0 && fds[at[s]].revents)))
				read_output(s);
		if ((unwatched || (at[0] >= 0 && fds[at[0]].revents)) && waitpid(cmd.pid, &cmd.status, WNOHANG) == cmd.pid)
			cmd.exited = 1;
		if (cmd.pid && cmd.exited && cmd.pipe[1] < 0 && cmd.pipe[2] < 0) {
			unsigned char how[2] = {WIFSIGNALED(cmd.status) ? 1 : 0,
						(unsigned char)(WIFSIGNALED(cmd.status) ? WTERMSIG(cmd.status)
											: WEXITSTATUS(cmd.status))};
			if (queue(EXIT, how, 2, NULL, 0) == 0)
				end_command(0);
		}
		if (fds[0].revents & (POLLIN | POLLHUP | POLLERR))
			read_host();
		flush();
	}
}
