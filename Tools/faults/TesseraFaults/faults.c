// Storage-fault injection for tests: an LD_PRELOAD library that makes one chosen file-system
// call of a process fail (or come back short), for files under one directory only.
//
// Why a preload library and not a Swift wrapper: it tests the real `tessera` binary through
// the real system calls (swift-system, Foundation and our own code alike), so no write step
// can hide behind a path the wrapper does not cover.
//
// Environment (all but TESSERA_FAULT_PATH optional):
//   TESSERA_FAULT_PATH    only files and directories under this path count (and fail)
//   TESSERA_FAULT         KIND:N[:ERRNO]  the Nth call of KIND fails with ERRNO (EIO default)
//                         KIND: create (open with O_CREAT, mkdir), write (write, pwrite,
//                         ftruncate), short (a write that stores half and says so), sync
//                         (fsync, fdatasync, also of directories), rename, read (read, pread)
//   TESSERA_FAULT_STICKY  1: every call of KIND from the Nth on fails (a disk that stays full)
//   TESSERA_FAULT_ARM     a file: calls count only while it exists (a long-running filter)
//   TESSERA_FAULT_REPORT  a file: "fired KIND N PATH" when the fault fires, and at exit the
//                         number of calls of each kind ("count create=3 write=40 ...")
//
// Not production code: built as a dynamic library only for the tests (libTesseraFaults.so).
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

enum kind { K_CREATE, K_WRITE, K_SHORT, K_SYNC, K_RENAME, K_READ, K_COUNT };
static const char *const kind_names[K_COUNT] = {"create", "write", "short", "sync", "rename", "read"};

#define MAX_FD 65536
static char *tracked[MAX_FD];            // path of a tracked descriptor, NULL if not tracked
static const char *prefix;
static size_t prefix_len;
static int fault_kind = -1;
static long fault_at;
static int fault_errno = EIO;
static int sticky;
static const char *arm_path;
static const char *report_path;
static long counters[K_COUNT];
static int initialized;

static int (*real_open)(const char *, int, ...);
static int (*real_open64)(const char *, int, ...);
static int (*real_openat)(int, const char *, int, ...);
static int (*real_openat64)(int, const char *, int, ...);
static int (*real_close)(int);
static ssize_t (*real_write)(int, const void *, size_t);
static ssize_t (*real_pwrite)(int, const void *, size_t, off_t);
static ssize_t (*real_pwrite64)(int, const void *, size_t, off_t);
static ssize_t (*real_read)(int, void *, size_t);
static ssize_t (*real_pread)(int, void *, size_t, off_t);
static ssize_t (*real_pread64)(int, void *, size_t, off_t);
static int (*real_fsync)(int);
static int (*real_fdatasync)(int);
static int (*real_ftruncate)(int, off_t);
static int (*real_ftruncate64)(int, off_t);
static int (*real_rename)(const char *, const char *);
static int (*real_renameat)(int, const char *, int, const char *);
static int (*real_renameat2)(int, const char *, int, const char *, unsigned int);
static int (*real_mkdir)(const char *, mode_t);

static int parse_errno(const char *name) {
    if (!name || !*name || strcmp(name, "EIO") == 0) return EIO;
    if (strcmp(name, "ENOSPC") == 0) return ENOSPC;
    if (strcmp(name, "EDQUOT") == 0) return EDQUOT;
    if (strcmp(name, "EROFS") == 0) return EROFS;
    return atoi(name) > 0 ? atoi(name) : EIO;
}

static void report(const char *line) {
    if (!report_path) return;
    int fd = real_open(report_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) return;
    real_write(fd, line, strlen(line));
    real_close(fd);
}

static void write_counts(void) {
    if (!report_path || !prefix) return;
    char line[256];
    snprintf(line, sizeof line, "count create=%ld write=%ld short=%ld sync=%ld rename=%ld read=%ld pid=%d\n",
             counters[K_CREATE], counters[K_WRITE], counters[K_SHORT], counters[K_SYNC], counters[K_RENAME],
             counters[K_READ], (int)getpid());
    report(line);
}

__attribute__((constructor)) static void setup(void) {
    real_open = dlsym(RTLD_NEXT, "open");
    real_open64 = dlsym(RTLD_NEXT, "open64");
    real_openat = dlsym(RTLD_NEXT, "openat");
    real_openat64 = dlsym(RTLD_NEXT, "openat64");
    real_close = dlsym(RTLD_NEXT, "close");
    real_write = dlsym(RTLD_NEXT, "write");
    real_pwrite = dlsym(RTLD_NEXT, "pwrite");
    real_pwrite64 = dlsym(RTLD_NEXT, "pwrite64");
    real_read = dlsym(RTLD_NEXT, "read");
    real_pread = dlsym(RTLD_NEXT, "pread");
    real_pread64 = dlsym(RTLD_NEXT, "pread64");
    real_fsync = dlsym(RTLD_NEXT, "fsync");
    real_fdatasync = dlsym(RTLD_NEXT, "fdatasync");
    real_ftruncate = dlsym(RTLD_NEXT, "ftruncate");
    real_ftruncate64 = dlsym(RTLD_NEXT, "ftruncate64");
    real_rename = dlsym(RTLD_NEXT, "rename");
    real_renameat = dlsym(RTLD_NEXT, "renameat");
    real_renameat2 = dlsym(RTLD_NEXT, "renameat2");
    real_mkdir = dlsym(RTLD_NEXT, "mkdir");

    prefix = getenv("TESSERA_FAULT_PATH");
    if (prefix && *prefix) prefix_len = strlen(prefix); else prefix = NULL;
    arm_path = getenv("TESSERA_FAULT_ARM");
    report_path = getenv("TESSERA_FAULT_REPORT");
    const char *st = getenv("TESSERA_FAULT_STICKY");
    sticky = st && strcmp(st, "1") == 0;
    const char *spec = getenv("TESSERA_FAULT");
    if (spec && *spec) {
        char buf[128];
        snprintf(buf, sizeof buf, "%s", spec);
        char *save = NULL;
        char *k = strtok_r(buf, ":", &save);
        char *n = strtok_r(NULL, ":", &save);
        char *e = strtok_r(NULL, ":", &save);
        for (int i = 0; k && i < K_COUNT; i++) if (strcmp(k, kind_names[i]) == 0) fault_kind = i;
        fault_at = n ? atol(n) : 0;
        fault_errno = parse_errno(e);
        if (fault_kind < 0 || fault_at < 1) {
            fprintf(stderr, "libTesseraFaults: TESSERA_FAULT=%s is not KIND:N[:ERRNO]\n", spec);
            abort();
        }
    }
    initialized = 1;
    atexit(write_counts);
}

static int under_prefix(const char *path) {
    if (!prefix || !path) return 0;
    if (strncmp(path, prefix, prefix_len) != 0) return 0;
    return path[prefix_len] == '\0' || path[prefix_len] == '/' || prefix[prefix_len - 1] == '/';
}

static int armed(void) {
    if (!arm_path) return 1;
    struct stat st;
    return stat(arm_path, &st) == 0;
}

// Counts a call of `kind` on `path`; returns 1 when this call is the one to fail.
static int should_fail(int kind, const char *path) {
    if (!initialized || !prefix || !armed()) return 0;
    long n = __atomic_add_fetch(&counters[kind], 1, __ATOMIC_SEQ_CST);
    if (kind != fault_kind) return 0;
    if (n != fault_at && !(sticky && n > fault_at)) return 0;
    char line[PATH_MAX + 64];
    snprintf(line, sizeof line, "fired %s %ld %s\n", kind_names[kind], n, path ? path : "?");
    report(line);
    return 1;
}

static const char *fd_path(int fd) { return (fd >= 0 && fd < MAX_FD) ? tracked[fd] : NULL; }

static void track(int fd, const char *path) {
    if (fd < 0 || fd >= MAX_FD) return;
    char *old = tracked[fd];
    tracked[fd] = under_prefix(path) ? strdup(path) : NULL;
    free(old);
}

// Resolves `path` relative to `dirfd` when it is relative, so openat on a tracked directory counts.
static const char *resolve(int dirfd, const char *path, char *buf, size_t size) {
    if (!path || path[0] == '/' || dirfd == AT_FDCWD) {
        if (path && path[0] != '/' && getcwd(buf, size)) {
            size_t len = strlen(buf);
            snprintf(buf + len, size - len, "/%s", path);
            return buf;
        }
        return path;
    }
    const char *dir = fd_path(dirfd);
    if (!dir) return path;
    snprintf(buf, size, "%s/%s", dir, path);
    return buf;
}

static int do_open(int (*real)(int, const char *, int, ...), int dirfd, const char *path, int flags, mode_t mode) {
    char buf[PATH_MAX];
    const char *full = resolve(dirfd, path, buf, sizeof buf);
    if ((flags & O_CREAT) && under_prefix(full) && should_fail(K_CREATE, full)) { errno = fault_errno; return -1; }
    int fd = real(dirfd, path, flags, mode);
    if (fd >= 0) track(fd, full);
    return fd;
}

static int open_via_at(int dirfd, const char *path, int flags, ...) {
    va_list ap; va_start(ap, flags); mode_t mode = va_arg(ap, mode_t); va_end(ap);
    (void)dirfd;
    return real_open(path, flags, mode);
}
static int open64_via_at(int dirfd, const char *path, int flags, ...) {
    va_list ap; va_start(ap, flags); mode_t mode = va_arg(ap, mode_t); va_end(ap);
    (void)dirfd;
    return real_open64(path, flags, mode);
}

#define MODE_ARG(flags) \
    mode_t mode = 0; \
    if ((flags) & (O_CREAT | __O_TMPFILE)) { va_list ap; va_start(ap, flags); mode = va_arg(ap, mode_t); va_end(ap); }

int open(const char *path, int flags, ...) { MODE_ARG(flags); return do_open(open_via_at, AT_FDCWD, path, flags, mode); }
int open64(const char *path, int flags, ...) { MODE_ARG(flags); return do_open(open64_via_at, AT_FDCWD, path, flags, mode); }
int openat(int dirfd, const char *path, int flags, ...) { MODE_ARG(flags); return do_open(real_openat, dirfd, path, flags, mode); }
int openat64(int dirfd, const char *path, int flags, ...) { MODE_ARG(flags); return do_open(real_openat64, dirfd, path, flags, mode); }

int close(int fd) {
    if (fd >= 0 && fd < MAX_FD && tracked[fd]) { free(tracked[fd]); tracked[fd] = NULL; }
    return real_close(fd);
}

// A write: fails whole, or (kind "short") stores the first half and returns its length.
static ssize_t do_write(int fd, const void *buf, size_t count, off_t offset, int positional,
                        ssize_t (*plain)(int, const void *, size_t), ssize_t (*at)(int, const void *, size_t, off_t)) {
    const char *path = fd_path(fd);
    if (path && count > 0) {
        if (should_fail(K_WRITE, path)) { errno = fault_errno; return -1; }
        if (should_fail(K_SHORT, path)) count = count > 1 ? count / 2 : count;
    }
    return positional ? at(fd, buf, count, offset) : plain(fd, buf, count);
}

ssize_t write(int fd, const void *buf, size_t count) { return do_write(fd, buf, count, 0, 0, real_write, NULL); }
ssize_t pwrite(int fd, const void *buf, size_t count, off_t offset) { return do_write(fd, buf, count, offset, 1, NULL, real_pwrite); }
ssize_t pwrite64(int fd, const void *buf, size_t count, off_t offset) { return do_write(fd, buf, count, offset, 1, NULL, real_pwrite64); }

int ftruncate(int fd, off_t length) {
    const char *path = fd_path(fd);
    if (path && should_fail(K_WRITE, path)) { errno = fault_errno; return -1; }
    return real_ftruncate(fd, length);
}
int ftruncate64(int fd, off_t length) {
    const char *path = fd_path(fd);
    if (path && should_fail(K_WRITE, path)) { errno = fault_errno; return -1; }
    return real_ftruncate64(fd, length);
}

ssize_t read(int fd, void *buf, size_t count) {
    const char *path = fd_path(fd);
    if (path && count > 0 && should_fail(K_READ, path)) { errno = fault_errno; return -1; }
    return real_read(fd, buf, count);
}
ssize_t pread(int fd, void *buf, size_t count, off_t offset) {
    const char *path = fd_path(fd);
    if (path && count > 0 && should_fail(K_READ, path)) { errno = fault_errno; return -1; }
    return real_pread(fd, buf, count, offset);
}
ssize_t pread64(int fd, void *buf, size_t count, off_t offset) {
    const char *path = fd_path(fd);
    if (path && count > 0 && should_fail(K_READ, path)) { errno = fault_errno; return -1; }
    return real_pread64(fd, buf, count, offset);
}

int fsync(int fd) {
    const char *path = fd_path(fd);
    if (path && should_fail(K_SYNC, path)) { errno = fault_errno; return -1; }
    return real_fsync(fd);
}
int fdatasync(int fd) {
    const char *path = fd_path(fd);
    if (path && should_fail(K_SYNC, path)) { errno = fault_errno; return -1; }
    return real_fdatasync(fd);
}

static int rename_fails(const char *from, const char *to) {
    char a[PATH_MAX], b[PATH_MAX];
    const char *fa = resolve(AT_FDCWD, from, a, sizeof a), *fb = resolve(AT_FDCWD, to, b, sizeof b);
    if (!under_prefix(fa) && !under_prefix(fb)) return 0;
    return should_fail(K_RENAME, under_prefix(fb) ? fb : fa);
}

int rename(const char *from, const char *to) {
    if (rename_fails(from, to)) { errno = fault_errno; return -1; }
    return real_rename(from, to);
}
int renameat(int fromfd, const char *from, int tofd, const char *to) {
    if (fromfd == AT_FDCWD && tofd == AT_FDCWD && rename_fails(from, to)) { errno = fault_errno; return -1; }
    return real_renameat(fromfd, from, tofd, to);
}
int renameat2(int fromfd, const char *from, int tofd, const char *to, unsigned int flags) {
    if (fromfd == AT_FDCWD && tofd == AT_FDCWD && rename_fails(from, to)) { errno = fault_errno; return -1; }
    return real_renameat2(fromfd, from, tofd, to, flags);
}

int mkdir(const char *path, mode_t mode) {
    char buf[PATH_MAX];
    const char *full = resolve(AT_FDCWD, path, buf, sizeof buf);
    struct stat st;
    // An existing directory answers EEXIST before the file system could be full: not a step.
    if (under_prefix(full) && stat(full, &st) != 0 && should_fail(K_CREATE, full)) { errno = fault_errno; return -1; }
    return real_mkdir(path, mode);
}
