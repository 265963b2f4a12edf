#pragma once
// The daemon's main thread: loads the config, makes the listener sockets (one per shard
// per listener, SO_REUSEPORT, STACK.md), starts the shards, and serves signals: SIGTERM
// and SIGINT drain and stop, SIGHUP reloads. Configuration generations are immutable
// snapshots handed to every shard at a safe point.
//
// Trust: operator-controlled inputs only (config, signals).

#include <uv.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "daemon/limiter.hpp"
#include "daemon/shard.hpp"

namespace sluice {

struct ServerOptions {
    std::string config_path;
    // Makes the per-shard maps reader (storage) for a config.
    std::function<std::unique_ptr<ShardMaps>(const Config&, int shard)> make_maps;
};

class Server {
public:
    explicit Server(ServerOptions opts);
    Server(const Server&) = delete;
    Server& operator=(const Server&) = delete;
    ~Server();

    // Runs until SIGTERM/SIGINT and every shard has drained. Returns the exit code.
    int run(std::shared_ptr<const Config> config);

private:
    bool open_listeners(const Config& cfg);
    void reload();
    void stop();

    ServerOptions opts_;
    uv_loop_t loop_{};
    uv_signal_t sigterm_{}, sigint_{}, sighup_{};
    ConnectionLimiter limiter_;
    std::vector<std::unique_ptr<Shard>> shards_;
    std::vector<std::vector<int>> fds_;  // [shard][listener]
    std::shared_ptr<const Snapshot> snapshot_;
    bool stopping_ = false;
};

}  // namespace sluice
