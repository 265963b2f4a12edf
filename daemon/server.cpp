#include "daemon/server.hpp"

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <csignal>
#include <cstring>

#include "common/log.hpp"

namespace sluice {
namespace {

int make_listen_socket(const SockAddr& a, bool reuseport, std::string& error) {
    int fd = ::socket(a.storage.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        error = std::strerror(errno);
        return -1;
    }
    int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (reuseport) {
        ::setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    }
    if (a.storage.ss_family == AF_INET6) {
        ::setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    }
    if (::bind(fd, reinterpret_cast<const sockaddr*>(&a.storage), a.len) != 0 ||
        (reuseport && ::listen(fd, 1024) != 0)) {
        error = std::strerror(errno);
        ::close(fd);
        return -1;
    }
    return fd;
}

}  // namespace

Server::Server(ServerOptions opts) : opts_(std::move(opts)) {}

Server::~Server() {
    for (auto& per_shard : fds_) {
        for (int fd : per_shard) {
            if (fd >= 0) {
                ::close(fd);
            }
        }
    }
}

bool Server::open_listeners(const Config& cfg) {
    // A plain bind first: SO_REUSEPORT would otherwise silently share the port with
    // another process of ours already listening there.
    for (const auto& l : cfg.listeners) {
        std::string e;
        int probe = make_listen_socket(l.address, false, e);
        if (probe < 0) {
            LogLine(Level::error, "listen_failed").kv("listener", l.name).kv("address", l.address_text).kv("error", e);
            return false;
        }
        ::close(probe);
    }
    fds_.assign(cfg.server.shards, {});
    for (unsigned s = 0; s < cfg.server.shards; ++s) {
        for (const auto& l : cfg.listeners) {
            std::string e;
            int fd = make_listen_socket(l.address, true, e);
            if (fd < 0) {
                LogLine(Level::error, "listen_failed").kv("listener", l.name).kv("address", l.address_text).kv("error", e);
                return false;
            }
            fds_[s].push_back(fd);
        }
    }
    return true;
}

int Server::run(std::shared_ptr<const Config> config) {
    std::signal(SIGPIPE, SIG_IGN);
    if (!open_listeners(*config)) {
        return 1;
    }
    auto snap = std::make_shared<Snapshot>();
    snap->config = config;
    snap->rules = policy::Rules::from_config(*config);
    snap->generation = 1;
    snapshot_ = snap;

    for (unsigned s = 0; s < config->server.shards; ++s) {
        ShardOptions o;
        o.index = static_cast<int>(s);
        o.snapshot = snapshot_;
        o.listener_fds = fds_[s];
        fds_[s].clear();  // owned by the shard's handles from now on
        o.limiter = &limiter_;
        o.maps = opts_.make_maps(*config, static_cast<int>(s));
        shards_.push_back(std::make_unique<Shard>(std::move(o)));
    }
    uv_loop_init(&loop_);
    for (auto* s : {&sigterm_, &sigint_, &sighup_}) {
        uv_signal_init(&loop_, s);
        s->data = this;
    }
    uv_signal_start(&sigterm_, [](uv_signal_t* s, int) { static_cast<Server*>(s->data)->stop(); }, SIGTERM);
    uv_signal_start(&sigint_, [](uv_signal_t* s, int) { static_cast<Server*>(s->data)->stop(); }, SIGINT);
    uv_signal_start(&sighup_, [](uv_signal_t* s, int) { static_cast<Server*>(s->data)->reload(); }, SIGHUP);

    for (auto& s : shards_) {
        s->start();
    }
    {
        LogLine line(Level::info, "started");
        line.kv("version", SLUICE_VERSION).kv("shards", config->server.shards).kv("config", config->path);
        for (const auto& l : config->listeners) {
            line.kv("listener", l.name + "=" + l.address_text);
        }
    }
    uv_run(&loop_, UV_RUN_DEFAULT);
    for (auto& s : shards_) {
        s->join();
    }
    uv_loop_close(&loop_);
    LogLine(Level::info, "stopped");
    return 0;
}

void Server::stop() {
    if (stopping_) {
        return;
    }
    stopping_ = true;
    LogLine(Level::info, "stopping").kv("grace", format_duration(snapshot_->config->limits.shutdown_grace));
    Millis grace = snapshot_->config->limits.shutdown_grace;
    for (auto& s : shards_) {
        s->post([grace](Shard& sh) { sh.drain(grace); });
    }
    for (auto* s : {&sigterm_, &sigint_, &sighup_}) {
        uv_close(reinterpret_cast<uv_handle_t*>(s), nullptr);
    }
}

void Server::reload() {
    const auto& old = *snapshot_->config;
    auto r = load_config(old.path);
    for (const auto& d : r.diagnostics) {
        LogLine(d.severity == Diagnostic::Severity::error ? Level::error : Level::warn, "config")
            .kv("problem", d.str());
    }
    if (!r.ok()) {
        LogLine(Level::error, "reload").kv("result", "rejected").kv("generation", snapshot_->generation);
        return;
    }
    // Listener sockets stay as they are: a changed listener set needs a restart for now.
    bool same = r.config->listeners.size() == old.listeners.size() &&
                r.config->server.shards == old.server.shards;
    for (std::size_t i = 0; same && i < old.listeners.size(); ++i) {
        same = r.config->listeners[i].name == old.listeners[i].name &&
               format_sockaddr(r.config->listeners[i].address) == format_sockaddr(old.listeners[i].address);
    }
    if (!same) {
        LogLine(Level::error, "reload").kv("result", "rejected").kv("reason", "listeners or shards changed; restart to apply");
        return;
    }
    auto snap = std::make_shared<Snapshot>();
    snap->config = r.config;
    snap->rules = policy::Rules::from_config(*r.config);
    snap->generation = snapshot_->generation + 1;
    snapshot_ = snap;
    for (auto& s : shards_) {
        s->post([snap](Shard& sh) { sh.set_snapshot(snap); });
    }
    LogLine(Level::info, "reload").kv("result", "ok").kv("generation", snap->generation);
}

}  // namespace sluice
