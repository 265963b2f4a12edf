#pragma once
// systemd readiness (Type=notify) by hand, without libsystemd: one datagram per state
// change to the AF_UNIX socket named in $NOTIFY_SOCKET (sd_notify(3)). A name starting
// with '@' is an abstract socket (the '@' becomes a NUL byte).
//
//   ready()      READY=1             the listeners accept and the shards run
//   reloading()  RELOADING=1 + MONOTONIC_USEC=...   a reload started (systemd >= 253 reads
//                                    it; older ones ignore it); ready() again when it ends
//   stopping()   STOPPING=1          draining started
//   status(s)    STATUS=...          one line for `systemctl status`
//
// Trust: the socket path comes from our environment (systemd or the operator). Promises:
// never blocks (MSG_DONTWAIT), never fails the daemon: without $NOTIFY_SOCKET every call
// is a no-op, and a send error is logged once.

#include <string>
#include <string_view>

namespace sluice {

class Notifier {
  public:
    // Reads $NOTIFY_SOCKET now.
    Notifier();
    // For tests: an explicit socket name ("" disables).
    explicit Notifier(std::string socket);

    bool enabled() const { return !socket_.empty(); }

    void ready();
    void reloading();
    void stopping();
    void status(std::string_view text);
    // Sends `state` as is (lines "KEY=VALUE\n"). Returns false when it could not be sent.
    bool send(std::string_view state);

  private:
    std::string socket_;
    bool warned_ = false;
};

}  // namespace sluice
