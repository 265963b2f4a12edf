#include "storage/maildir.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>

#include "common/fd.hpp"

namespace sluice::storage {
namespace {

CommitStatus status_of(int err) {
    return (err == ENOSPC || err == EDQUOT) ? CommitStatus::no_space : CommitStatus::io_error;
}

bool write_all(int fd, const char* p, std::size_t n) {
    while (n > 0) {
        ssize_t w = ::write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) {
                continue;
            }
            return false;
        }
        p += w;
        n -= static_cast<std::size_t>(w);
    }
    return true;
}

std::string unique_name(const std::string& id) {
    static std::atomic<std::uint64_t> seq{0};
    char host[64] = {};
    gethostname(host, sizeof host - 1);
    for (char* h = host; *h; ++h) {
        if (*h == '/' || *h == ':') {
            *h = '_';  // Maildir names must not contain these
        }
    }
    timespec ts{};
    clock_gettime(CLOCK_REALTIME, &ts);
    return std::to_string(ts.tv_sec) + ".M" + std::to_string(ts.tv_nsec / 1000) + "P" +
           std::to_string(getpid()) + "Q" + std::to_string(seq.fetch_add(1)) + "_" + id + "." +
           host;
}

}  // namespace

std::string ensure_maildir(const std::string& path) {
    for (const char* sub : {"", "/tmp", "/new", "/cur"}) {
        std::string p = path + sub;
        if (::mkdir(p.c_str(), 0750) != 0 && errno != EEXIST) {
            return "cannot create " + p + ": " + std::strerror(errno);
        }
    }
    return {};
}

CommitStatus write_maildir(const std::string& path, const Message& msg,
                           const std::vector<const Recipient*>& rcpts, std::string& error) {
    std::string name = unique_name(msg.id);
    std::string tmp = path + "/tmp/" + name;
    std::string dst = path + "/new/" + name;

    std::string head = "Return-Path: <" + msg.sender + ">\r\n";
    for (const auto* r : rcpts) {
        head += "Delivered-To: " + r->deliver_to + "\r\n";
    }

    Fd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0640));
    if (fd.get() < 0) {
        int e = errno;
        error = "open " + tmp + ": " + std::strerror(e);
        return status_of(e);
    }
    auto fail = [&](const char* what) {
        int e = errno;
        error = std::string(what) + " " + tmp + ": " + std::strerror(e);
        ::unlink(tmp.c_str());
        return status_of(e);
    };
    if (!write_all(fd.get(), head.data(), head.size()) ||
        !write_all(fd.get(), msg.data.data(), msg.data.size())) {
        return fail("write");
    }
    if (::fdatasync(fd.get()) != 0) {
        return fail("fdatasync");
    }
    if (::close(fd.release()) != 0) {
        return fail("close");
    }
    if (::rename(tmp.c_str(), dst.c_str()) != 0) {
        return fail("rename");
    }
    return CommitStatus::ok;
}

CommitStatus sync_maildir(const std::string& path, std::string& error) {
    // A rename is durable only once its directory is (the RFC 5321 §4.1.1.4 promise).
    Fd dir(::open((path + "/new").c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (dir.get() < 0 || ::fsync(dir.get()) != 0) {
        int e = errno;
        error = "fsync " + path + "/new: " + std::strerror(e);
        return status_of(e);
    }
    return CommitStatus::ok;
}

}  // namespace sluice::storage
