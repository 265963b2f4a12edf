#pragma once
// The client side of the control protocol (daemon/control.hpp): find the daemon's control
// socket from the config, connect, send one JSON request line, read one JSON reply line.
//
// Trust: the socket path comes from the operator's config; the reply comes from the
// daemon and is still parsed defensively (bounded size, must be a JSON object).
// Promises: every failure is a value with one clear line of text, never an exception;
// waiting is bounded by the caller's timeout.

#include <chrono>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "common/fd.hpp"

namespace sluice::ctl {

// The largest reply accepted (stats of many listeners stay far below it).
inline constexpr std::size_t kMaxReply = 16 * 1024 * 1024;

// control.socket of the config at `config_path`. When the config has errors (the very case
// `sluicectl reload` must report), the key is read from the TOML alone, and failing that
// from the [control] section's text, so the daemon can still be asked. Relative paths are
// relative to the config file, as the daemon resolves them. nullopt and `error` only when
// the file cannot be read.
std::optional<std::string> control_socket_path(const std::string& config_path, std::string& error);

class ControlClient {
  public:
    // nullopt and `error` = "cannot connect to PATH: reason" when the daemon is not there.
    static std::optional<ControlClient> connect(const std::string& path, std::string& error);

    // Sends `request`, waits up to `timeout` for the reply (a JSON object). nullopt and
    // `error` when the daemon closed, timed out, or answered something that is not one.
    std::optional<nlohmann::json> call(const nlohmann::json& request,
                                       std::chrono::milliseconds timeout, std::string& error);

    const std::string& path() const { return path_; }

  private:
    ControlClient(Fd fd, std::string path) : fd_(std::move(fd)), path_(std::move(path)) {}

    Fd fd_;
    std::string path_;
    std::string buf_;  // bytes received after the last reply
};

}  // namespace sluice::ctl
