#include "daemon/server.hpp"

#include "daemon/dns/resolver.hpp"

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>

#include "common/log.hpp"
#include "daemon/privileges.hpp"
#include "daemon/snapshot.hpp"
#include "storage/map_check.hpp"
#include "storage/maps.hpp"
#include "storage/spool_ops.hpp"

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

bool read_file(const std::string& path, std::string& text, std::string& error) {
    std::ifstream in(path, std::ios::binary);
    if (!in) {
        error = std::strerror(errno);
        return false;
    }
    std::stringstream ss;
    ss << in.rdbuf();
    text = ss.str();
    return true;
}

double millis_since(std::chrono::steady_clock::time_point t) {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t).count();
}

std::string fixed1(double v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.1f", v);
    return buf;
}

std::string joined(const nlohmann::json& names) {
    std::string out;
    for (const auto& n : names) {
        out += (out.empty() ? "" : ",") + n.get<std::string>();
    }
    return out.empty() ? "-" : out;
}

std::string position(const SourceRef& w) {
    return w.file + ":" + std::to_string(w.line) + ":" + std::to_string(w.column);
}

}  // namespace

// A reload's validation, on the thread pool: everything here is the job's own.
struct Server::ReloadJob {
    uv_work_t req{};
    Server* server = nullptr;
    std::string path;
    LoadResult loaded;
    std::vector<Diagnostic> diagnostics;  // the loader's, then the maps' (storage::check_maps)
    control::FlatConfig flat;
    control::MapStamps stamps;
    control::MapStamps known_good;  // maps that passed the last validation, as stamped then
    double validate_ms = 0;

    static void work(uv_work_t* req) {
        auto& job = *static_cast<ReloadJob*>(req->data);
        auto t0 = std::chrono::steady_clock::now();
        std::string text, error;
        if (!read_file(job.path, text, error)) {
            job.diagnostics.push_back({Diagnostic::Severity::error,
                                       {job.path, 0, 0},
                                       "cannot read config file: " + error});
        } else {
            job.loaded = load_config_text(text, job.path);
            job.diagnostics = job.loaded.diagnostics;
            if (job.loaded.ok()) {
                const auto& dir = job.loaded.config->maps.dir;
                job.stamps = control::stamp_maps(dir);
                std::set<policy::MapId> unchanged;
                for (std::size_t i = 0; i < static_cast<std::size_t>(policy::MapId::count_); ++i) {
                    auto id = static_cast<policy::MapId>(i);
                    std::string name(policy::map_name(id));
                    auto now = job.stamps.find(name);
                    auto good = job.known_good.find(name);
                    if (now != job.stamps.end() && good != job.known_good.end() &&
                        now->second == good->second) {
                        unchanged.insert(id);
                    }
                }
                auto more = storage::check_maps(*job.loaded.config, job.diagnostics,
                                                storage::UnreadableMap::error, unchanged);
                job.diagnostics.insert(job.diagnostics.end(), more.begin(), more.end());
                // What passed now may be skipped next time (a map with an error may not).
                for (const auto& [name, stamp] : job.stamps) {
                    bool bad = false;
                    for (const auto& d : more) {
                        bad = bad || (d.severity == Diagnostic::Severity::error &&
                                      d.where.file.find("/" + name + ".") != std::string::npos);
                    }
                    if (!bad) {
                        job.known_good[name] = stamp;
                    }
                }
            }
            job.flat = control::flatten_config(text, job.path);
        }
        job.validate_ms = millis_since(t0);
    }

    static void after(uv_work_t* req, int) {
        std::unique_ptr<ReloadJob> job(static_cast<ReloadJob*>(req->data));
        job->server->validated(*job);
    }
};

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
            LogLine(Level::error, "listen_failed")
                .kv("listener", l.name)
                .kv("address", l.address_text)
                .kv("error", e);
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
                LogLine(Level::error, "listen_failed")
                    .kv("listener", l.name)
                    .kv("address", l.address_text)
                    .kv("error", e);
                return false;
            }
            fds_[s].push_back(fd);
        }
    }
    return true;
}

int Server::run(std::shared_ptr<const Config> config) {
    std::signal(SIGPIPE, SIG_IGN);
    // What may need root comes first (daemon/privileges.hpp): the listeners (ports below
    // 1024), the certificate and key, the stats listener and the control socket.
    if (!open_listeners(*config)) {
        return 1;
    }
    std::string tls_error;
    snapshot_ = make_snapshot(config, 1, tls_error);
    if (!snapshot_) {
        LogLine(Level::error, "tls_failed").kv("error", tls_error);
        return 1;
    }
    uv_loop_init(&loop_);
    for (auto* s : {&sigterm_, &sigint_, &sighup_, &sigusr2_}) {
        uv_signal_init(&loop_, s);
        s->data = this;
    }
    uv_signal_start(
        &sigterm_, [](uv_signal_t* s, int) { static_cast<Server*>(s->data)->stop(); }, SIGTERM);
    uv_signal_start(
        &sigint_, [](uv_signal_t* s, int) { static_cast<Server*>(s->data)->stop(); }, SIGINT);
    uv_signal_start(
        &sighup_,
        [](uv_signal_t* s, int) {
            static_cast<Server*>(s->data)->reload([](nlohmann::json) {});  // the log says it all
        },
        SIGHUP);
    if (opts_.test_stall_seconds > 0) {
        // Test only (sluiced --test-stall-on-sigusr2): shard 0's loop blocks, as a stuck
        // callback would, so the watchdog test can watch the pings stop.
        uv_signal_start(
            &sigusr2_,
            [](uv_signal_t* s, int) {
                auto* self = static_cast<Server*>(s->data);
                auto seconds = self->opts_.test_stall_seconds;
                LogLine(Level::warn, "test_stall").kv("shard", 0).kv("seconds", seconds);
                self->shards_[0]->post([seconds](Shard&) {
                    std::this_thread::sleep_for(std::chrono::seconds(seconds));
                });
            },
            SIGUSR2);
    }
    auto abandon = [this] {
        for (auto* s : {&sigterm_, &sigint_, &sighup_, &sigusr2_}) {
            uv_close(reinterpret_cast<uv_handle_t*>(s), nullptr);
        }
        uv_close(reinterpret_cast<uv_handle_t*>(&switched_), nullptr);
        uv_close(reinterpret_cast<uv_handle_t*>(&inbox_async_), nullptr);
        uv_close(reinterpret_cast<uv_handle_t*>(&drain_check_), nullptr);
        if (control_) {
            control_->close();
        }
        if (stats_) {
            stats_->close();
        }
        uv_run(&loop_, UV_RUN_DEFAULT);
        uv_loop_close(&loop_);
        return 1;
    };
    if (!start_services(*config)) {
        return abandon();
    }
    // Then the identity it serves as, before any shard reads a byte from a client.
    if (!become_service_user(*config)) {
        return abandon();
    }
    // The spool as that user: every file it makes from now on (segments, big messages) is
    // one it must be able to open again (storage/spool.cpp reopens them by path). Before
    // the shards start: recovery must know every message that was ever answered 250.
    storage::SpoolOptions so;
    so.dir = config->spool.dir;
    so.max_bytes = config->spool.max_size;
    so.min_free_bytes = config->spool.min_free;
    so.reserve_bytes = config->spool.reserve;
    so.syncs_in_flight = config->spool.syncs_in_flight;
    so.commit_delay = config->spool.commit_delay;
    auto opened = storage::Spool::open(so);
    if (!opened.ok()) {
        LogLine(Level::error, "spool_failed")
            .kv("dir", so.dir)
            .kv("user", current_identity().user)
            .kv("error", opened.error().message);
        return abandon();
    }
    spool_ = std::move(*opened);

    rates_ = std::make_unique<rates::LocalStore>(config->rates.table_size);
    for (unsigned s = 0; s < config->server.shards; ++s) {
        ShardOptions o;
        o.index = static_cast<int>(s);
        o.peers = &shards_;
        o.snapshot = snapshot_;
        o.listener_fds = fds_[s];
        fds_[s].clear();  // owned by the shard's handles from now on
        o.limiter = &limiter_;
        o.rates = rates_.get();
        o.spool = spool_.get();
        o.auth_throttle = &auth_throttle_;
        o.maps = opts_.make_maps(*config, static_cast<int>(s));
        shards_.push_back(std::make_unique<Shard>(std::move(o)));
    }
    for (auto& s : shards_) {
        s->start();
    }
    watchdog_.start();
    // Recovery: every message that was answered 250 and is not final is delivered.
    schedule_pending();
    {
        LogLine line(Level::info, "started");
        line.kv("version", SLUICE_VERSION)
            .kv("shards", config->server.shards)
            .kv("config", config->path);
        for (const auto& l : config->listeners) {
            line.kv("listener", l.name + "=" + l.address_text);
        }
    }
    notify_.ready();
    uv_run(&loop_, UV_RUN_DEFAULT);
    for (auto& s : shards_) {
        s->join();
    }
    spool_->close();
    uv_loop_close(&loop_);
    LogLine(Level::info, "stopped");
    return 0;
}

void Server::stop() {
    if (stopping_) {
        return;
    }
    stopping_ = true;
    LogLine(Level::info, "stopping")
        .kv("grace", format_duration(snapshot_->config->limits.shutdown_grace));
    Millis grace = snapshot_->config->limits.shutdown_grace;
    for (auto& s : shards_) {
        s->post([grace](Shard& sh) { sh.drain(grace); });
    }
    for (auto* s : {&sigterm_, &sigint_, &sighup_, &sigusr2_}) {
        uv_close(reinterpret_cast<uv_handle_t*>(s), nullptr);
    }
    // Not ready from now on; the control socket and /healthz keep answering until the
    // shards have drained.
    notify_.stopping();
    if (stats_) {
        stats_->set_draining();
    }
    uv_timer_start(
        &drain_check_, [](uv_timer_t* t) { static_cast<Server*>(t->data)->check_drained(); }, 20,
        20);
}

void Server::check_drained() {
    for (auto& s : shards_) {
        if (!s->finished()) {
            return;
        }
    }
    // Every shard ran everything posted before its drain: a switch still being counted
    // has happened on all of them.
    shard_switched();
    uv_timer_stop(&drain_check_);
    uv_close(reinterpret_cast<uv_handle_t*>(&drain_check_), nullptr);
    uv_close(reinterpret_cast<uv_handle_t*>(&switched_), nullptr);
    {
        std::lock_guard lock(inbox_mu_);
        inbox_.clear();  // replies to clients that are going away with the control socket
    }
    uv_close(reinterpret_cast<uv_handle_t*>(&inbox_async_), nullptr);
    watchdog_.close();
    if (control_) {
        control_->close();
    }
    if (stats_) {
        stats_->close();
    }
}

std::string Server::listen_stats(const SockAddr& address) {
    if (!stats_) {
        stats_ = std::make_unique<stats::StatsServer>(
            &loop_, [this] { return stats::render_prometheus(totals()); });
    }
    return stats_->listen(address);
}

bool Server::become_service_user(const Config& cfg) {
    auto log_identity = [](Level level, std::string_view note) {
        Identity now = current_identity();
        LogLine(level, "privileges")
            .kv("user", now.user)
            .kv("uid", static_cast<std::uint64_t>(now.uid))
            .kv("group", now.group)
            .kv("gid", static_cast<std::uint64_t>(now.gid))
            .kv("groups", format_groups(now.groups))
            .kv("low_ports", can_bind_low_ports() ? "yes" : "no")
            .kv("note", note);
    };
    if (::geteuid() != 0) {
        // systemd's User= (or an operator's own account): the identity is already chosen;
        // ports below 1024 need CAP_NET_BIND_SERVICE (AmbientCapabilities=).
        log_identity(Level::info, "not started as root: serving as the invoking user");
        return true;
    }
    Identity target;
    std::string e = resolve_identity(cfg.server.user, cfg.server.group, target);
    if (!e.empty()) {
        LogLine(Level::error, "privileges").kv("error", e);
        return false;
    }
    if (target.uid == 0) {
        if (!cfg.server.allow_root) {
            LogLine(Level::error, "privileges")
                .kv("error", "server.user \"" + cfg.server.user +
                                 "\" is root: sluiced does not serve as root; set [server] user "
                                 "to an unprivileged user (default sluice), or allow_root = true");
            return false;
        }
        log_identity(Level::warn, "serving as root (server.allow_root = true)");
        return true;
    }
    // The control socket was made by root: it goes to the service user and its group
    // (mode 0660, daemon/control.cpp), so operators in that group use sluicectl.
    if (control_ && !control_->path().empty() &&
        ::chown(cfg.control.socket.c_str(), target.uid, target.gid) != 0) {
        LogLine(Level::error, "privileges")
            .kv("error", "chown " + cfg.control.socket + ": " + std::strerror(errno));
        return false;
    }
    e = drop_privileges(target);
    if (!e.empty()) {
        LogLine(Level::error, "privileges").kv("error", e);
        return false;
    }
    log_identity(Level::info, "dropped root");
    return true;
}

bool Server::start_services(const Config& cfg) {
    started_ = std::chrono::steady_clock::now();
    start_unix_ =
        std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
    uv_async_init(&loop_, &switched_,
                  [](uv_async_t* a) { static_cast<Server*>(a->data)->shard_switched(); });
    switched_.data = this;
    uv_async_init(&loop_, &inbox_async_, [](uv_async_t* a) {
        auto* self = static_cast<Server*>(a->data);
        std::vector<std::function<void()>> work;
        {
            std::lock_guard lock(self->inbox_mu_);
            work.swap(self->inbox_);
        }
        for (auto& fn : work) {
            fn();
        }
    });
    inbox_async_.data = this;
    uv_timer_init(&loop_, &drain_check_);
    drain_check_.data = this;
    // What the first reload compares with. The file is read again here (main.cpp loaded
    // it a moment ago): an edit in between shows up as a change in the next reload.
    std::string text, error;
    if (read_file(cfg.path, text, error)) {
        flat_config_ = control::flatten_config(text, cfg.path);
    }
    map_stamps_ = control::stamp_maps(cfg.maps.dir);

    if (cfg.stats.address) {
        std::string e = listen_stats(*cfg.stats.address);
        if (!e.empty()) {
            LogLine(Level::error, "listen_failed").kv("listener", "stats").kv("error", e);
            return false;
        }
    }
    // Without its control socket the daemon still serves mail (SIGHUP reloads); the
    // operator sees why sluicectl cannot connect.
    control_ = std::make_unique<control::ControlServer>(
        &loop_, [this](control::Request r, control::ControlServer::Respond respond) {
            handle_control(std::move(r), std::move(respond));
        });
    std::string e = control_->listen(cfg.control.socket);
    if (!e.empty()) {
        LogLine(Level::error, "control_failed").kv("socket", cfg.control.socket).kv("error", e);
    }
    return true;
}

stats::Totals Server::totals() {
    std::vector<const ShardMetrics*> metrics;
    for (auto& s : shards_) {
        metrics.push_back(&s->metrics());
    }
    stats::ServerNumbers n;
    n.generation = snapshot_->generation;
    n.reloads_ok = reloads_ok_;
    n.reloads_failed = reloads_failed_;
    n.queue_messages = spool_ ? spool_->size() : 0;
    if (spool_) {
        auto st = spool_->stats();
        n.spool_committed = st.committed;
        n.spool_batches = st.batches;
        n.spool_fsyncs = st.fsyncs;
        n.spool_commit_ns = st.commit_ns;
        n.transactions_open = st.expected;
        n.spool_state = storage::to_string(st.state);
        n.spool_free_bytes = st.free_bytes;
        n.spool_reserve_bytes = st.reserve_bytes;
        n.spool_write_errors = st.write_errors;
        if (auto oldest = spool_->oldest_received()) {
            n.queue_oldest_age = std::max(
                0.0, std::chrono::duration<double>(std::chrono::system_clock::now() - *oldest)
                         .count());
        }
    }
    n.stats_evicted = stats_ ? stats_->evicted() : 0;
    n.control_evicted = control_ ? control_->evicted() : 0;
    n.shard_loop_lag = watchdog_.loop_lag_seconds();
    n.start_time = start_unix_;
    n.version = SLUICE_VERSION;
    return stats::collect(metrics, n);
}

void Server::handle_control(control::Request request, control::ControlServer::Respond respond) {
    switch (request.cmd) {
        case control::Command::status: {
            control::StatusInfo info;
            info.version = SLUICE_VERSION;
            info.uptime_seconds = millis_since(started_) / 1000.0;
            info.shards = static_cast<unsigned>(shards_.size());
            info.generation = snapshot_->generation;
            for (auto& s : shards_) {
                info.shard_generations.push_back(
                    s->metrics().generation.load(std::memory_order_acquire));
                info.sessions_active += s->metrics().sessions_active.get();
            }
            info.queue_messages = spool_ ? spool_->size() : 0;
            if (spool_) {
                auto st = spool_->stats();
                info.spool_state = storage::to_string(st.state);
                info.spool_free_bytes = st.free_bytes;
                info.spool_reserve_bytes = st.reserve_bytes;
            }
            info.draining = stopping_;
            info.reload_in_progress = reload_running_;
            const auto& st = snapshot_->config->stats.address;
            info.stats_address = st ? format_sockaddr(*st) : "";
            respond(control::status(*snapshot_->config, info));
            return;
        }
        case control::Command::stats:
            respond(nlohmann::json{{"ok", true}, {"stats", stats::to_json(totals())}});
            return;
        case control::Command::reload:
            reload(std::move(respond));
            return;
        case control::Command::explain: {
            std::string e;
            auto args = control::parse_explain_args(request.body, e);
            if (!args) {
                respond(control::error_reply(e));
                return;
            }
            // One reader for explain, on this thread, refreshed like a shard's (maps.dir
            // cannot change live, so it stays valid).
            if (!explain_maps_) {
                explain_maps_ = std::make_unique<storage::MapReader>(
                    snapshot_->config->maps.dir,
                    storage::MapReader::Options{std::chrono::milliseconds(0), -1});
            }
            explain_maps_->refresh();
            respond(control::explain(*snapshot_, *explain_maps_, *args));
            return;
        }
        case control::Command::queue:
            queue_command(request.body, std::move(respond));
            return;
        case control::Command::dns:
            dns_command(request.body, std::move(respond));
            return;
        case control::Command::rates: {
            if (!explain_maps_) {
                explain_maps_ = std::make_unique<storage::MapReader>(
                    snapshot_->config->maps.dir,
                    storage::MapReader::Options{std::chrono::milliseconds(0), -1});
            }
            explain_maps_->refresh();
            // The sessions' clock (daemon/session.cpp over_rate): steady, in microseconds.
            const auto now = std::chrono::duration_cast<std::chrono::microseconds>(
                                 smtp::Clock::now().time_since_epoch())
                                 .count();
            respond(control::rates_report(*snapshot_->config, *rates_, *explain_maps_, request.body,
                                          now));
            return;
        }
    }
    respond(control::error_reply("unknown command"));
}

namespace {

// `sluicectl queue ...` against the live spool: the same functions as offline, run on the
// thread pool because operator actions write durably.
struct QueueJob {
    uv_work_t req{};
    Server* server = nullptr;
    storage::Spool* spool = nullptr;
    storage::QueueCommand cmd;
    std::string words;  // the command as the operator gave it, for the log
    storage::QueueOutput out;
    control::ControlServer::Respond respond;
};

// The last non-empty line of `text` (a queue command's summary).
std::string last_line(const std::string& text) {
    auto end = text.find_last_not_of('\n');
    if (end == std::string::npos) {
        return {};
    }
    auto start = text.rfind('\n', end);
    return text.substr(start == std::string::npos ? 0 : start + 1,
                       end - (start == std::string::npos ? 0 : start + 1) + 1);
}

}  // namespace

void Server::queue_command(const nlohmann::json& body, control::ControlServer::Respond respond) {
    std::vector<std::string> args;
    if (body.contains("args") && body["args"].is_array()) {
        for (const auto& a : body["args"]) {
            if (!a.is_string()) {
                respond(control::error_reply("queue: args must be strings"));
                return;
            }
            args.push_back(a.get<std::string>());
        }
    }
    auto cmd = storage::parse_queue_command(args);
    if (!cmd.ok()) {
        respond(
            nlohmann::json{{"ok", true}, {"exit", 2}, {"out", ""}, {"err", cmd.error().message}});
        return;
    }
    auto* job = new QueueJob;
    job->req.data = job;
    job->server = this;
    job->spool = spool_.get();
    job->cmd = std::move(*cmd);
    for (const auto& a : args) {
        job->words += (job->words.empty() ? "" : " ") + a;
    }
    job->respond = std::move(respond);
    uv_queue_work(
        &loop_, &job->req,
        [](uv_work_t* r) {
            auto* j = static_cast<QueueJob*>(r->data);
            j->out = storage::run_queue_command(*j->spool, j->cmd);
        },
        [](uv_work_t* r, int) {
            std::unique_ptr<QueueJob> j(static_cast<QueueJob*>(r->data));
            using Verb = storage::QueueCommand::Verb;
            if (j->cmd.verb != Verb::list && j->cmd.verb != Verb::show && !j->cmd.dry_run) {
                // What an operator changed in the queue is on record (incident recovery).
                LogLine(j->out.exit_code == 0 ? Level::info : Level::warn, "queue_op")
                    .kv("command", j->words)
                    .kv("exit", static_cast<std::uint64_t>(j->out.exit_code))
                    .kv("result", last_line(j->out.exit_code == 0 ? j->out.out : j->out.err));
            }
            if (j->cmd.verb == storage::QueueCommand::Verb::flush ||
                j->cmd.verb == storage::QueueCommand::Verb::release) {
                j->server->schedule_pending();  // what became due is delivered now
            }
            j->respond(nlohmann::json{{"ok", true},
                                      {"exit", j->out.exit_code},
                                      {"out", j->out.out},
                                      {"err", j->out.err}});
        });
}

void Server::post_here(std::function<void()> fn) {
    std::lock_guard lock(inbox_mu_);
    inbox_.push_back(std::move(fn));
    uv_async_send(&inbox_async_);
}

void Server::dns_command(const nlohmann::json& body, control::ControlServer::Respond respond) {
    auto it = body.find("domain");
    if (it == body.end() || !it->is_string() || it->get<std::string>().empty() ||
        it->get<std::string>().size() > dns::limits::name) {
        respond(control::error_reply("dns needs \"domain\" (a domain name)"));
        return;
    }
    if (stopping_ || shards_.empty()) {
        respond(control::error_reply("the daemon is shutting down"));
        return;
    }
    std::string domain = dns::normalise_name(it->get<std::string>());
    // Shard 0 answers with its resolver and cache: what it would do for this domain now.
    auto shared = std::make_shared<control::ControlServer::Respond>(std::move(respond));
    shards_.front()->post([this, domain, shared](Shard& sh) {
        auto reply = [this, shared](nlohmann::json j) {
            post_here([shared, j = std::move(j)] { (*shared)(j); });
        };
        if (sh.resolver() == nullptr) {
            reply(control::error_reply("the shard's resolver is not running"));
            return;
        }
        const auto& cfg = *sh.snapshot()->config;
        auto route = cfg.route_for(domain);
        dns::PlanOptions opts;
        opts.prefer = cfg.dns.prefer_ipv4 ? dns::Prefer::ipv4 : dns::Prefer::ipv6;
        opts.max_targets = cfg.dns.mx_addresses;
        std::string route_text = route ? route->transport.text : std::string();
        dns::plan_destination(
            domain, dns::self_of(cfg), opts, sh.resolver()->rng(), sh.resolver()->lookup_fn(),
            [reply, domain, route_text](dns::Destination d) {
                reply(control::dns_report(domain, route_text, d));
            });
    });
}

void Server::schedule_pending() {
    // Every queued message goes to its owner shard, which loads it and delivers what is due.
    auto pending = spool_->pending();
    std::vector<std::vector<storage::QueueId>> per_shard(shards_.size());
    for (auto& e : pending) {
        per_shard[owner_index(e.id, shards_.size())].push_back(e.id);
    }
    auto now = std::chrono::system_clock::now();
    for (std::size_t i = 0; i < shards_.size(); ++i) {
        shards_[i]->post([ids = std::move(per_shard[i]), now](Shard& sh) {
            for (const auto& id : ids) {
                if (sh.outbound() != nullptr) {
                    sh.outbound()->schedule(id, now);
                }
            }
        });
    }
    LogLine(Level::info, "scheduled").kv("messages", static_cast<std::uint64_t>(pending.size()));
}

void Server::reload(ReloadDone done) {
    if (stopping_) {
        done(control::error_reply("the daemon is shutting down; nothing changed"));
        return;
    }
    reload_next_.push_back(std::move(done));
    if (!reload_running_) {
        start_reload();
    }
}

void Server::start_reload() {
    reload_running_ = true;
    reload_current_ = std::move(reload_next_);
    reload_next_.clear();
    reload_started_ = std::chrono::steady_clock::now();
    notify_.reloading();
    auto* job = new ReloadJob;
    job->req.data = job;
    job->server = this;
    job->path = snapshot_->config->path;
    job->known_good = maps_known_good_;
    // Reading and validating maps can take a while with big maps: never on a loop.
    uv_queue_work(&loop_, &job->req, ReloadJob::work, ReloadJob::after);
}

void Server::validated(ReloadJob& job) {
    maps_known_good_ = job.known_good;
    nlohmann::json warnings = nlohmann::json::array();
    std::vector<std::string> errors;
    for (const auto& d : job.diagnostics) {
        if (d.severity == Diagnostic::Severity::error) {
            errors.push_back(d.str());
        } else {
            warnings.push_back(d.str());
            LogLine(Level::warn, "config").kv("problem", d.str());
        }
    }
    if (errors.empty() && !job.loaded.ok()) {
        errors.push_back(job.path + ": the config did not load");
    }
    if (stopping_) {
        errors = {"the daemon is shutting down; nothing changed"};
    }
    if (!errors.empty()) {
        reload_failed(errors, warnings);
        return;
    }
    const Config& before = *snapshot_->config;
    std::shared_ptr<const Config> config = job.loaded.config;
    const Config& after = *config;
    errors = control::restart_only_changes(before, after);
    if (before.server.user != after.server.user || before.server.group != after.server.group ||
        before.server.allow_root != after.server.allow_root) {
        auto it = after.sources.find("server.user");
        errors.push_back((it == after.sources.end() ? after.path : position(it->second)) +
                         ": server.user, server.group and server.allow_root apply at start "
                         "(the daemon has already become its user); restart sluiced to apply");
    }
    if (before.spool.dir != after.spool.dir) {
        errors.push_back(after.path + ": spool.dir changes from " + before.spool.dir + " to " +
                         after.spool.dir + ": the spool is open; restart sluiced to apply");
    }
    if (!errors.empty()) {
        reload_failed(errors, warnings);
        return;
    }

    // Sockets for new listeners, one per shard, all bound before anything changes.
    auto plan = control::plan_listeners(before, after);
    std::vector<std::vector<std::pair<std::string, int>>> added(shards_.size());
    auto close_added = [&added] {
        for (auto& per_shard : added) {
            for (auto& [address, fd] : per_shard) {
                ::close(fd);
            }
        }
    };
    for (std::size_t j : plan.added) {
        const auto& l = after.listeners[j];
        std::string address = format_sockaddr(l.address);
        std::string e;
        // A plain bind first, as at start: SO_REUSEPORT alone would share the port with
        // another process of ours.
        int probe = make_listen_socket(l.address, false, e);
        if (probe >= 0) {
            ::close(probe);
            for (std::size_t s = 0; s < shards_.size() && e.empty(); ++s) {
                int fd = make_listen_socket(l.address, true, e);
                if (fd >= 0) {
                    added[s].emplace_back(address, fd);
                }
            }
        }
        if (!e.empty()) {
            close_added();
            if (l.address.port < 1024 && !can_bind_low_ports()) {
                e += " (ports below 1024 need CAP_NET_BIND_SERVICE, which sluiced, running as " +
                     current_identity().user +
                     ", does not hold: start it as root or with "
                     "AmbientCapabilities=CAP_NET_BIND_SERVICE; or restart it to apply)";
            }
            reload_failed({position(l.where) + ": listener \"" + l.name + "\": cannot listen on " +
                           address + ": " + e},
                          warnings);
            return;
        }
    }
    // The certificate of the new generation: a bad file keeps the old one serving.
    std::string tls_error;
    auto built = make_snapshot(config, snapshot_->generation + 1, tls_error);
    if (!built) {
        close_added();
        auto it = after.sources.find("tls.certificate");
        reload_failed({(it == after.sources.end() ? after.path : position(it->second)) +
                       ": tls: " + tls_error},
                      warnings);
        return;
    }
    // The stats endpoint moves last: its new address is the last thing that can fail.
    auto stats_text = [](const Config& c) {
        return c.stats.address ? format_sockaddr(*c.stats.address) : "";
    };
    if (stats_text(before) != stats_text(after) && after.stats.address) {
        std::string e = listen_stats(*after.stats.address);
        if (!e.empty()) {
            close_added();
            auto it = after.sources.find("stats.address");
            reload_failed({(it == after.sources.end() ? after.path : position(it->second)) +
                           ": stats.address: " + e},
                          warnings);
            return;
        }
    } else if (!after.stats.address && stats_) {
        stats_->stop_listening();
    }

    // Commit: from here nothing fails.
    auto snap = built;
    auto describe = [](const ListenerConfig& l) {
        return l.name + " (" + format_sockaddr(l.address) + ")";
    };
    nlohmann::json changed;
    changed["keys"] = control::changed_keys(flat_config_, job.flat);
    changed["maps"] = control::changed_maps(map_stamps_, job.stamps);
    changed["listeners_added"] = nlohmann::json::array();
    changed["listeners_removed"] = nlohmann::json::array();
    changed["listeners_changed"] = nlohmann::json::array();
    for (std::size_t j : plan.added) {
        changed["listeners_added"].push_back(describe(after.listeners[j]));
    }
    for (std::size_t i : plan.removed) {
        changed["listeners_removed"].push_back(describe(before.listeners[i]));
    }
    for (std::size_t j : plan.changed) {
        changed["listeners_changed"].push_back(describe(after.listeners[j]));
    }
    flat_config_ = std::move(job.flat);
    map_stamps_ = std::move(job.stamps);
    snapshot_ = snap;
    reload_reply_ = {{"ok", true},
                     {"generation", snap->generation},
                     {"changed", changed},
                     {"warnings", warnings},
                     {"validate_ms", job.validate_ms}};
    switching_to_ = snap->generation;
    switch_started_ = std::chrono::steady_clock::now();
    for (std::size_t i = 0; i < shards_.size(); ++i) {
        shards_[i]->post([this, snap, fds = std::move(added[i])](Shard& sh) mutable {
            // Maps first: the new generation starts with every published map in view (new
            // map files are validated off the loop; the switch waits for them).
            sh.maps().refresh_then(sh, [this, &sh, snap, fds = std::move(fds)]() mutable {
                sh.set_snapshot(snap, std::move(fds));
                uv_async_send(&switched_);  // the only libuv call safe from another thread
            });
        });
    }
}

void Server::shard_switched() {
    if (switching_to_ == 0) {
        return;
    }
    for (auto& s : shards_) {
        if (s->metrics().generation.load(std::memory_order_acquire) < switching_to_) {
            return;
        }
    }
    switching_to_ = 0;
    ++reloads_ok_;
    double apply_ms = millis_since(switch_started_);
    double total_ms = millis_since(reload_started_);
    reload_reply_["apply_ms"] = apply_ms;
    reload_reply_["total_ms"] = total_ms;
    const auto& changed = reload_reply_["changed"];
    LogLine(Level::info, "reload")
        .kv("result", "ok")
        .kv("generation", reload_reply_["generation"].get<std::uint64_t>())
        .kv("keys", joined(changed["keys"]))
        .kv("maps", joined(changed["maps"]))
        .kv("listeners_added", joined(changed["listeners_added"]))
        .kv("listeners_removed", joined(changed["listeners_removed"]))
        .kv("validate_ms", fixed1(reload_reply_["validate_ms"].get<double>()))
        .kv("apply_ms", fixed1(apply_ms))
        .kv("total_ms", fixed1(total_ms));
    complete_reload(std::move(reload_reply_));
}

void Server::reload_failed(const std::vector<std::string>& errors, const nlohmann::json& warnings) {
    ++reloads_failed_;
    for (const auto& e : errors) {
        LogLine(Level::error, "config").kv("problem", e);
    }
    LogLine(Level::error, "reload")
        .kv("result", "rejected")
        .kv("generation", snapshot_->generation)
        .kv("errors", static_cast<std::uint64_t>(errors.size()));
    std::string summary = std::to_string(errors.size()) +
                          (errors.size() == 1 ? " error" : " errors") +
                          "; nothing changed, generation " + std::to_string(snapshot_->generation) +
                          " stays in service";
    complete_reload({{"ok", false},
                     {"error", summary},
                     {"errors", errors},
                     {"warnings", warnings},
                     {"generation", snapshot_->generation}});
}

void Server::complete_reload(nlohmann::json reply) {
    auto waiting = std::move(reload_current_);
    reload_current_.clear();
    reload_running_ = false;
    if (!stopping_) {
        notify_.ready();  // ends the RELOADING=1 state, whatever the outcome
    }
    for (auto& done : waiting) {
        done(reply);
    }
    if (!reload_next_.empty()) {
        if (stopping_) {
            auto later = std::move(reload_next_);
            reload_next_.clear();
            for (auto& done : later) {
                done(control::error_reply("the daemon is shutting down; nothing changed"));
            }
        } else {
            start_reload();
        }
    }
}

}  // namespace sluice
