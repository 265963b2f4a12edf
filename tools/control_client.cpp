#include "tools/control_client.hpp"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <toml++/toml.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "common/config.hpp"

namespace sluice::ctl {
namespace {

namespace fs = std::filesystem;

constexpr const char* kDefaultSocket = "/run/sluice/control.sock";

std::string resolve(const std::string& path, const std::string& config_path) {
    fs::path p(path);
    if (p.is_absolute()) {
        return path;
    }
    return (fs::absolute(config_path).parent_path() / p).lexically_normal().string();
}

// The [control] section's `socket = "..."`, read as text: for a file TOML cannot parse.
std::optional<std::string> scan_socket(const std::string& text) {
    std::istringstream in(text);
    std::string line;
    bool in_control = false;
    while (std::getline(in, line)) {
        auto first = line.find_first_not_of(" \t");
        if (first == std::string::npos || line[first] == '#') {
            continue;
        }
        line = line.substr(first);
        if (line[0] == '[') {
            in_control = line.rfind("[control]", 0) == 0;
            continue;
        }
        if (!in_control || line.rfind("socket", 0) != 0) {
            continue;
        }
        auto q1 = line.find('"');
        auto q2 = q1 == std::string::npos ? q1 : line.find('"', q1 + 1);
        if (q2 != std::string::npos && line.find('=') < q1) {
            return line.substr(q1 + 1, q2 - q1 - 1);
        }
    }
    return std::nullopt;
}

}  // namespace

std::optional<std::string> control_socket_path(const std::string& config_path, std::string& error) {
    std::ifstream in(config_path, std::ios::binary);
    if (!in) {
        error = "cannot read config " + config_path + ": " + std::strerror(errno);
        return std::nullopt;
    }
    std::stringstream ss;
    ss << in.rdbuf();
    std::string text = ss.str();
    auto loaded = load_config_text(text, config_path);
    if (loaded.ok()) {
        return loaded.config->control.socket;
    }
    try {
        auto tbl = toml::parse(text, config_path);
        if (auto s = tbl["control"]["socket"].value<std::string>()) {
            return resolve(*s, config_path);
        }
        return std::string(kDefaultSocket);
    } catch (const toml::parse_error&) {
        if (auto s = scan_socket(text)) {
            return resolve(*s, config_path);
        }
        return std::string(kDefaultSocket);
    }
}

std::optional<ControlClient> ControlClient::connect(const std::string& path, std::string& error) {
    sockaddr_un a{};
    if (path.size() >= sizeof a.sun_path) {
        error = "cannot connect to " + path + ": path too long";
        return std::nullopt;
    }
    Fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!fd.valid()) {
        error = "cannot connect to " + path + ": " + std::strerror(errno);
        return std::nullopt;
    }
    a.sun_family = AF_UNIX;
    std::memcpy(a.sun_path, path.data(), path.size());
    if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
        error = "cannot connect to " + path + ": " + std::strerror(errno);
        if (errno == ENOENT || errno == ECONNREFUSED) {
            error += " (is sluiced running?)";
        }
        return std::nullopt;
    }
    return ControlClient(std::move(fd), path);
}

std::optional<nlohmann::json> ControlClient::call(const nlohmann::json& request,
                                                  std::chrono::milliseconds timeout,
                                                  std::string& error) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    std::string line =
        request.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
    std::size_t off = 0;
    std::string send_error;
    while (off < line.size()) {
        ssize_t n = ::send(fd_.get(), line.data() + off, line.size() - off, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            // The daemon may have refused us and closed: its reason is still readable.
            send_error = "lost the connection to " + path_ + ": " + std::strerror(errno);
            break;
        }
        off += static_cast<std::size_t>(n);
    }
    std::size_t lf;
    while ((lf = buf_.find('\n')) == std::string::npos) {
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
            deadline - std::chrono::steady_clock::now());
        if (left.count() <= 0) {
            error = "no reply from " + path_ + " within " + std::to_string(timeout.count() / 1000) +
                    " s";
            return std::nullopt;
        }
        pollfd p{fd_.get(), POLLIN, 0};
        int r = ::poll(&p, 1, static_cast<int>(std::min<long long>(left.count(), 1000)));
        if (r < 0 && errno != EINTR) {
            error = std::string("poll: ") + std::strerror(errno);
            return std::nullopt;
        }
        if (r <= 0) {
            continue;
        }
        char tmp[65536];
        ssize_t n = ::recv(fd_.get(), tmp, sizeof tmp, 0);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            error = !send_error.empty()
                        ? send_error
                        : "the daemon closed the connection on " + path_ +
                              (n < 0 ? std::string(": ") + std::strerror(errno) : std::string());
            return std::nullopt;
        }
        buf_.append(tmp, static_cast<std::size_t>(n));
        if (buf_.size() > kMaxReply) {
            error = "reply from " + path_ + " is too large";
            return std::nullopt;
        }
    }
    std::string reply = buf_.substr(0, lf);
    buf_.erase(0, lf + 1);
    auto j = nlohmann::json::parse(reply, nullptr, false);
    if (j.is_discarded() || !j.is_object()) {
        error = "unreadable reply from " + path_;
        return std::nullopt;
    }
    return j;
}

}  // namespace sluice::ctl
