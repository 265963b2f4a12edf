#pragma once
// The daemon's main thread: loads the config, makes the listener sockets (one per shard
// per listener, SO_REUSEPORT: the kernel spreads connections), starts the shards, and
// serves signals: SIGTERM and SIGINT drain and stop, SIGHUP reloads. Configuration generations are immutable
// snapshots handed to every shard at a safe point.
//
// It also runs the control socket (daemon/control.hpp: sluicectl reload, status, stats,
// explain), the stats endpoint (daemon/stats.hpp) and systemd readiness (daemon/notify.hpp).
//
// Reload (SIGHUP and `sluicectl reload` both call reload()): the config file and the maps
// are read and validated on the thread pool (the same checks as `sluiced --check`), never
// on a shard; then, on this thread, anything that cannot change live is refused
// (server.shards, maps.dir, spool.dir, control.socket: restart to apply), sockets for
// added listeners are bound, and only when every fallible step has succeeded is the new
// snapshot (generation + 1) posted to every shard. The reply is sent once every shard
// has switched. A config with any error changes nothing and the reply lists every error
// as FILE:LINE:COL. Reloads are serialised; requests that arrive during one are served
// together by the next, which reads the file again.
//
// Trust: operator-controlled inputs only (config, signals).

#include <uv.h>

#include <chrono>
#include <functional>
#include <functional>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "daemon/auth.hpp"
#include "daemon/control.hpp"
#include "daemon/limiter.hpp"
#include "daemon/notify.hpp"
#include "daemon/shard.hpp"
#include "daemon/stats.hpp"
#include "daemon/watchdog.hpp"
#include "storage/spool.hpp"

namespace sluice {

namespace storage {
class MapReader;
}

struct ServerOptions {
    std::string config_path;
    // Makes the per-shard maps reader (storage) for a config.
    std::function<std::unique_ptr<ShardMaps>(const Config&, int shard)> make_maps;
    // Test only (sluiced --test-stall-on-sigusr2 SECONDS): SIGUSR2 blocks shard 0's loop
    // for this long, so a test can see the watchdog stop pinging. 0: SIGUSR2 is ignored.
    int test_stall_seconds = 0;
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
    void queue_command(const nlohmann::json& body, control::ControlServer::Respond respond);
    void schedule_pending();
    // Completes one reload request with its reply ({"ok":...}, control protocol).
    using ReloadDone = std::function<void(nlohmann::json)>;
    struct ReloadJob;

    bool open_listeners(const Config& cfg);
    bool start_services(const Config& cfg);
    // Started as root: becomes [server] user/group (daemon/privileges.hpp), or refuses.
    bool become_service_user(const Config& cfg);
    std::string listen_stats(const SockAddr& address);
    void reload(ReloadDone done);
    void start_reload();
    void validated(ReloadJob& job);
    void reload_failed(const std::vector<std::string>& errors, const nlohmann::json& warnings);
    void shard_switched();
    void complete_reload(nlohmann::json reply);
    void stop();
    void check_drained();
    void handle_control(control::Request request, control::ControlServer::Respond respond);
    stats::Totals totals();

    ServerOptions opts_;
    uv_loop_t loop_{};
    uv_signal_t sigterm_{}, sigint_{}, sighup_{}, sigusr2_{};
    ConnectionLimiter limiter_;
    std::unique_ptr<rates::LocalStore> rates_;  // sized by rates.table_size at start
    std::vector<std::unique_ptr<Shard>> shards_;
    std::vector<std::vector<int>> fds_;  // [shard][listener]
    std::shared_ptr<const Snapshot> snapshot_;
    std::unique_ptr<storage::Spool> spool_;
    auth::AuthThrottle auth_throttle_;
    bool stopping_ = false;

    Notifier notify_;
    Watchdog watchdog_{&loop_, notify_, shards_};  // WATCHDOG=1 while every shard answers
    std::unique_ptr<control::ControlServer> control_;
    std::unique_ptr<stats::StatsServer> stats_;
    std::unique_ptr<storage::MapReader> explain_maps_;  // this thread only: explain's view
    uv_async_t switched_{};     // a shard switched generation (shard threads -> here)
    // Work that shards hand back to this loop (a `dns` reply), drained by inbox_async_.
    uv_async_t inbox_async_{};
    std::mutex inbox_mu_;
    std::vector<std::function<void()>> inbox_;
    void post_here(std::function<void()> fn);
    void dns_command(const nlohmann::json& body, control::ControlServer::Respond respond);
    uv_timer_t drain_check_{};  // while stopping: have the shards finished?
    std::chrono::steady_clock::time_point started_;
    double start_unix_ = 0;
    std::uint64_t reloads_ok_ = 0;
    std::uint64_t reloads_failed_ = 0;
    // The live generation's config file flattened and its maps' identities: what the next
    // reload reports as changed.
    control::FlatConfig flat_config_;
    control::MapStamps map_stamps_;
    control::MapStamps maps_known_good_;  // maps that passed validation, by stamp
    // Reload state (one at a time).
    bool reload_running_ = false;
    std::vector<ReloadDone> reload_next_;     // asked while one runs: served by the next
    std::vector<ReloadDone> reload_current_;  // served by the one running
    std::uint64_t switching_to_ = 0;          // generation the shards are switching to
    nlohmann::json reload_reply_;             // sent once every shard has switched
    std::chrono::steady_clock::time_point reload_started_, switch_started_;
};

}  // namespace sluice
