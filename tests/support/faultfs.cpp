// faultfs: an LD_PRELOAD shim that makes the file system calls a full or failing disk
// fails (open, write, fdatasync, rename...) fail with a chosen errno, for files under one
// directory, at the moments a test chooses. It lets the integration tests put a real
// sluiced's spool on a failing disk (EIO from fdatasync is what a healthy disk never
// gives); a full disk is tested on a real small tmpfs instead.
//
//   LD_PRELOAD=libsluice_faultfs.so
//   SLUICE_FAULT_DIR=/abs/spool      only paths under this directory (and fds opened there)
//   SLUICE_FAULT_CTL=/abs/faults     read at each such call: whitespace-separated OP=ERRNO
//                                    (OP: open write fdatasync fsync rename ftruncate
//                                    fallocate; ERRNO: EIO ENOSPC EDQUOT EROFS), or empty
//
// Every failure injected is counted in SLUICE_FAULT_CTL.hits (one line per failed call:
// "OP PATH"), so a test can tell its faults were met. Calls on other files (sockets, logs,
// maps) pass straight through, at the cost of one table look-up.

// Both the plain and the *64 names are defined here, each once (meson builds with
// _FILE_OFFSET_BITS=64, which would rename the plain ones to the *64 ones).
#undef _FILE_OFFSET_BITS
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

#include <atomic>

namespace {

constexpr int kMaxFd = 1 << 16;
std::atomic<unsigned char> g_marked[kMaxFd];  // fds opened under SLUICE_FAULT_DIR

template <class F>
F real(const char* name) {
    return reinterpret_cast<F>(dlsym(RTLD_NEXT, name));
}

const char* fault_dir() {
    static const char* d = getenv("SLUICE_FAULT_DIR");
    return d;
}

bool under(const char* path) {
    const char* d = fault_dir();
    if (d == nullptr || path == nullptr) {
        return false;
    }
    char abs[PATH_MAX];
    if (path[0] != '/') {
        if (getcwd(abs, sizeof abs) == nullptr) {
            return false;
        }
        size_t n = strlen(abs);
        snprintf(abs + n, sizeof abs - n, "/%s", path);
        path = abs;
    }
    size_t n = strlen(d);
    return strncmp(path, d, n) == 0 && (path[n] == '\0' || path[n] == '/');
}

int errno_named(const char* s, size_t n) {
    struct {
        const char* name;
        int value;
    } const table[] = {{"EIO", EIO}, {"ENOSPC", ENOSPC}, {"EDQUOT", EDQUOT}, {"EROFS", EROFS}};
    for (const auto& e : table) {
        if (strlen(e.name) == n && strncmp(s, e.name, n) == 0) {
            return e.value;
        }
    }
    return EIO;
}

// The errno to fail `op` with now, or 0. The control file is read with the real calls.
int fault_for(const char* op) {
    static auto r_open = real<int (*)(const char*, int, ...)>("open");
    static auto r_read = real<ssize_t (*)(int, void*, size_t)>("read");
    static auto r_close = real<int (*)(int)>("close");
    const char* ctl = getenv("SLUICE_FAULT_CTL");
    if (ctl == nullptr) {
        return 0;
    }
    int fd = r_open(ctl, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return 0;
    }
    char buf[512];
    ssize_t n = r_read(fd, buf, sizeof buf - 1);
    r_close(fd);
    if (n <= 0) {
        return 0;
    }
    buf[n] = '\0';
    size_t oplen = strlen(op);
    for (char* p = buf; *p != '\0';) {
        while (*p == ' ' || *p == '\n' || *p == '\t') {
            ++p;
        }
        char* end = p;
        while (*end != '\0' && *end != ' ' && *end != '\n' && *end != '\t') {
            ++end;
        }
        char* eq = static_cast<char*>(memchr(p, '=', static_cast<size_t>(end - p)));
        if (eq != nullptr && static_cast<size_t>(eq - p) == oplen && strncmp(p, op, oplen) == 0) {
            return errno_named(eq + 1, static_cast<size_t>(end - eq - 1));
        }
        p = end;
    }
    return 0;
}

void note_hit(const char* op, const char* what) {
    static auto r_open = real<int (*)(const char*, int, ...)>("open");
    static auto r_write = real<ssize_t (*)(int, const void*, size_t)>("write");
    static auto r_close = real<int (*)(int)>("close");
    const char* ctl = getenv("SLUICE_FAULT_CTL");
    if (ctl == nullptr) {
        return;
    }
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s.hits", ctl);
    int fd = r_open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) {
        return;
    }
    char line[PATH_MAX + 32];
    int n = snprintf(line, sizeof line, "%s %s\n", op, what);
    (void)r_write(fd, line, static_cast<size_t>(n));
    r_close(fd);
}

bool marked(int fd) {
    return fd >= 0 && fd < kMaxFd && g_marked[fd].load(std::memory_order_relaxed) != 0;
}

// An fd-based call on a marked fd: the errno to fail it with, or 0.
int fd_fault(int fd, const char* op) {
    if (!marked(fd)) {
        return 0;
    }
    int e = fault_for(op);
    if (e != 0) {
        char what[32];
        snprintf(what, sizeof what, "fd=%d", fd);
        note_hit(op, what);
    }
    return e;
}

int path_fault(const char* path, const char* op) {
    if (!under(path)) {
        return 0;
    }
    int e = fault_for(op);
    if (e != 0) {
        note_hit(op, path);
    }
    return e;
}

void mark_if_under(int fd) {
    if (fd < 0 || fd >= kMaxFd || fault_dir() == nullptr) {
        return;
    }
    char link[64], target[PATH_MAX];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, target, sizeof target - 1);
    bool yes = false;
    if (n > 0) {
        target[n] = '\0';
        yes = under(target);
    }
    g_marked[fd].store(yes ? 1 : 0, std::memory_order_relaxed);
}

mode_t mode_arg(int flags, va_list ap) {
    return (flags & (O_CREAT | O_TMPFILE)) != 0 ? static_cast<mode_t>(va_arg(ap, int)) : 0;
}

}  // namespace

extern "C" {

int open(const char* path, int flags, ...) {
    static auto r = real<int (*)(const char*, int, ...)>("open");
    va_list ap;
    va_start(ap, flags);
    mode_t mode = mode_arg(flags, ap);
    va_end(ap);
    if (int e = path_fault(path, "open"); e != 0) {
        errno = e;
        return -1;
    }
    int fd = r(path, flags, mode);
    mark_if_under(fd);
    return fd;
}

int open64(const char* path, int flags, ...) {
    static auto r = real<int (*)(const char*, int, ...)>("open64");
    va_list ap;
    va_start(ap, flags);
    mode_t mode = mode_arg(flags, ap);
    va_end(ap);
    if (int e = path_fault(path, "open"); e != 0) {
        errno = e;
        return -1;
    }
    int fd = r(path, flags, mode);
    mark_if_under(fd);
    return fd;
}

int openat(int dirfd, const char* path, int flags, ...) {
    static auto r = real<int (*)(int, const char*, int, ...)>("openat");
    va_list ap;
    va_start(ap, flags);
    mode_t mode = mode_arg(flags, ap);
    va_end(ap);
    if (dirfd == AT_FDCWD || path[0] == '/') {
        if (int e = path_fault(path, "open"); e != 0) {
            errno = e;
            return -1;
        }
    }
    int fd = r(dirfd, path, flags, mode);
    mark_if_under(fd);
    return fd;
}

int close(int fd) {
    static auto r = real<int (*)(int)>("close");
    if (fd >= 0 && fd < kMaxFd) {
        g_marked[fd].store(0, std::memory_order_relaxed);
    }
    return r(fd);
}

#define FD_CALL(ret, name, op, params, args)        \
    ret name params {                               \
        static auto r = real<ret(*) params>(#name); \
        if (int e = fd_fault(fd, op); e != 0) {     \
            errno = e;                              \
            return -1;                              \
        }                                           \
        return r args;                              \
    }

FD_CALL(ssize_t, write, "write", (int fd, const void* buf, size_t n), (fd, buf, n))
FD_CALL(ssize_t, pwrite, "write", (int fd, const void* buf, size_t n, off_t off), (fd, buf, n, off))
FD_CALL(ssize_t, pwrite64, "write", (int fd, const void* buf, size_t n, off64_t off),
        (fd, buf, n, off))
FD_CALL(ssize_t, writev, "write", (int fd, const struct iovec* iov, int cnt), (fd, iov, cnt))
FD_CALL(ssize_t, pwritev, "write", (int fd, const struct iovec* iov, int cnt, off_t off),
        (fd, iov, cnt, off))
FD_CALL(ssize_t, pwritev64, "write", (int fd, const struct iovec* iov, int cnt, off64_t off),
        (fd, iov, cnt, off))
FD_CALL(int, fdatasync, "fdatasync", (int fd), (fd))
FD_CALL(int, fsync, "fsync", (int fd), (fd))
FD_CALL(int, ftruncate, "ftruncate", (int fd, off_t len), (fd, len))
FD_CALL(int, ftruncate64, "ftruncate", (int fd, off64_t len), (fd, len))
FD_CALL(int, fallocate, "fallocate", (int fd, int mode, off_t off, off_t len), (fd, mode, off, len))

// posix_fallocate returns the error instead of setting errno.
int posix_fallocate(int fd, off_t off, off_t len) {
    static auto r = real<int (*)(int, off_t, off_t)>("posix_fallocate");
    if (int e = fd_fault(fd, "fallocate"); e != 0) {
        return e;
    }
    return r(fd, off, len);
}

int posix_fallocate64(int fd, off64_t off, off64_t len) {
    static auto r = real<int (*)(int, off64_t, off64_t)>("posix_fallocate64");
    if (int e = fd_fault(fd, "fallocate"); e != 0) {
        return e;
    }
    return r(fd, off, len);
}

int rename(const char* from, const char* to) {
    static auto r = real<int (*)(const char*, const char*)>("rename");
    if (int e = path_fault(from, "rename"); e != 0) {
        errno = e;
        return -1;
    }
    return r(from, to);
}

int renameat(int fromfd, const char* from, int tofd, const char* to) {
    static auto r = real<int (*)(int, const char*, int, const char*)>("renameat");
    if (fromfd == AT_FDCWD || from[0] == '/') {
        if (int e = path_fault(from, "rename"); e != 0) {
            errno = e;
            return -1;
        }
    }
    return r(fromfd, from, tofd, to);
}

}  // extern "C"
