#include "daemon/notify.hpp"

#include <sys/socket.h>
#include <sys/un.h>

#include <cerrno>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <ctime>

#include "common/fd.hpp"
#include "common/log.hpp"

namespace sluice {

Notifier::Notifier() {
    const char* s = std::getenv("NOTIFY_SOCKET");
    if (s != nullptr) {
        socket_ = s;
    }
}

Notifier::Notifier(std::string socket) : socket_(std::move(socket)) {}

bool Notifier::send(std::string_view state) {
    if (socket_.empty()) {
        return false;
    }
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::string error;
    if (socket_.size() >= sizeof addr.sun_path || (socket_[0] != '/' && socket_[0] != '@')) {
        error = "unusable NOTIFY_SOCKET";
    }
    Fd fd;
    if (error.empty()) {
        std::memcpy(addr.sun_path, socket_.data(), socket_.size());
        if (socket_[0] == '@') {
            addr.sun_path[0] = '\0';  // abstract namespace
        }
        fd.reset(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
        if (!fd.valid()) {
            error = std::strerror(errno);
        }
    }
    if (error.empty()) {
        // An abstract address is exactly as long as its name; a path gets its NUL.
        auto len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + socket_.size() +
                                          (socket_[0] == '@' ? 0 : 1));
        ssize_t n = ::sendto(fd.get(), state.data(), state.size(), MSG_NOSIGNAL | MSG_DONTWAIT,
                             reinterpret_cast<const sockaddr*>(&addr), len);
        if (n < 0) {
            error = std::strerror(errno);
        }
    }
    if (!error.empty()) {
        if (!warned_) {
            warned_ = true;
            LogLine(Level::warn, "notify_failed").kv("socket", socket_).kv("error", error);
        }
        return false;
    }
    return true;
}

void Notifier::ready() {
    send("READY=1\nSTATUS=serving\n");
}

void Notifier::reloading() {
    // systemd wants the time of the request on CLOCK_MONOTONIC with RELOADING=1
    // (sd_notify(3)), so it can match the READY=1 that ends the reload.
    timespec ts{};
    ::clock_gettime(CLOCK_MONOTONIC, &ts);
    auto usec = static_cast<unsigned long long>(ts.tv_sec) * 1000000ULL +
                static_cast<unsigned long long>(ts.tv_nsec) / 1000ULL;
    send("RELOADING=1\nSTATUS=reloading\nMONOTONIC_USEC=" + std::to_string(usec) + "\n");
}

void Notifier::stopping() {
    send("STOPPING=1\nSTATUS=draining\n");
}

void Notifier::status(std::string_view text) {
    std::string line = "STATUS=";
    for (char c : text) {
        line.push_back(c == '\n' ? ' ' : c);
    }
    send(line + "\n");
}

}  // namespace sluice
