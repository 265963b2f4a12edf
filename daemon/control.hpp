#pragma once
// Operating the live daemon: the control socket that `sluicectl` talks to, and the pure
// pieces of the control protocol and of a reload report.
//
// Protocol: one JSON object per line ('\n', an optional '\r' before it is ignored), each
// request answered by exactly one JSON object on one line, in order:
//   {"cmd":"status"}                -> {"ok":true, "version":..., "generation":..., ...}
//   {"cmd":"stats"}                 -> {"ok":true, "stats":{...}}
//   {"cmd":"reload"}                -> {"ok":true, "generation":N, "changed":{...}, ...}
//                                      or {"ok":false, "error":..., "errors":["FILE:LINE:COL:
//                                      ..."]}
//   {"cmd":"explain", "client":IP, "from":ADDR, "to":ADDR, "helo":..., "auth":..., "listener":...}
//                                   -> {"ok":true, "code":"D111", "verdict":..., "reply":..., ...}
//   {"cmd":"rates", "client":IP (optional)}
//                                   -> {"ok":true, "table":{...}, "limits":[...], ...}
// A bad request gets {"ok":false,"error":...} and the connection stays usable; a line over
// limits::line octets gets an error and the connection is closed.
//
// ControlServer serves a Unix socket on the daemon's main loop. Trust: the socket is mode
// 0660 and the peer's uid (SO_PEERCRED) must be root or the daemon's own; everything a
// client sends is still validated. Promises: it never blocks the loop (non-blocking I/O,
// reading stops while a request is in progress or limits::pause_output of replies are
// unread, so input and output held per client stay bounded), many clients are served at
// once, a client is closed limits::idle_timeout_ms after it connected or after its last
// reply unless a request is in progress (the timer restarts on replies only: blank-line
// keep-alives and a request trickled in part do not extend it), and a stale socket file is
// replaced but a live one is never stolen.
// No script can lock operators out: past limits::max_clients_per_uid clients of one peer
// uid, or limits::max_clients in all, a new client evicts one that has no request in
// progress (of that uid, or of all): the oldest of the peer process holding the most such
// clients, so a script reconnecting in a loop only evicts its own; only when every one is
// busy is the new client refused.

#include <uv.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/config.hpp"
#include "daemon/flood_log.hpp"
#include "daemon/session.hpp"
#include "policy/maps.hpp"
#include "daemon/dns/destination.hpp"

namespace sluice::control {

namespace limits {
inline constexpr std::size_t line = 64 * 1024;              // request line, octets
inline constexpr std::size_t max_clients = 256;             // one more evicts the oldest idle
inline constexpr std::size_t max_clients_per_uid = 64;      // of one peer uid, likewise
inline constexpr std::uint64_t idle_timeout_ms = 5'000;     // after connect or a reply: closed
inline constexpr std::size_t max_output = 4 * 1024 * 1024;  // unread replies: closed beyond
inline constexpr std::size_t pause_output = 64 * 1024;      // unread replies: no more requests
inline constexpr int backlog = 128;
}  // namespace limits

// ---- the protocol (pure) ------------------------------------------------------------

// Splits a byte stream into lines of at most `max` octets. Memory is bounded by `max`
// plus what one feed() brings.
class LineReader {
  public:
    explicit LineReader(std::size_t max = limits::line) : max_(max) {}
    void feed(std::string_view bytes);
    // The next complete line without its line end; nullopt when none is complete or after
    // an overflow.
    std::optional<std::string> next();
    // The unterminated rest (for a peer that ends its last request with EOF).
    std::optional<std::string> take_rest();
    // A line exceeded `max`: the stream cannot be re-synchronised.
    bool overflow() const { return overflow_; }
    std::size_t buffered() const { return buf_.size() - start_; }

  private:
    void compact();

    std::size_t max_;
    std::string buf_;
    std::size_t start_ = 0;  // first unconsumed byte
    bool overflow_ = false;
};

enum class Command { status, stats, reload, explain, queue, dns, rates };

std::string_view command_name(Command c);

// `sluicectl dns DOMAIN`: what delivery by MX would do for the domain (daemon/dns).
nlohmann::json dns_report(const std::string& domain, const std::string& route,
                          const dns::Destination& d);

struct Request {
    Command cmd = Command::status;
    nlohmann::json body;  // the whole request object
};

struct ParsedRequest {
    std::optional<Request> request;
    std::string error;  // set when request is empty
};

// One request line: a JSON object with a known "cmd".
ParsedRequest parse_request(std::string_view line);

// The arguments of `explain`, validated for shape (strings where strings are expected).
struct ExplainArgs {
    std::string client;
    std::string from;
    std::string to;
    std::string helo;
    std::string auth;
    std::string listener;     // empty: the first listener
    std::optional<bool> tls;  // empty: what the listener implies
};

std::optional<ExplainArgs> parse_explain_args(const nlohmann::json& body, std::string& error);

// {"ok":false,"error":message}
nlohmann::json error_reply(std::string_view message);
// One response line: compact JSON (invalid UTF-8 replaced) and '\n'.
std::string encode(const nlohmann::json& reply);

// ---- what the daemon answers (pure functions over its state) -----------------------------

// Runs the live policy on one envelope, as a session on `args.listener` would.
nlohmann::json explain(const Snapshot& snapshot, const policy::Maps& maps, const ExplainArgs& args);

// `sluicectl rates [CLIENT]`: the [rates] settings and the table's fill; with a client
// (body "client"), every limit under its address and network keys, read without counting.
nlohmann::json rates_report(const Config& config, const rates::LocalStore& store,
                            const policy::Maps& maps, const nlohmann::json& body, rates::Micros now);

struct StatusInfo {
    std::string version;
    double uptime_seconds = 0;
    unsigned shards = 0;
    std::uint64_t generation = 0;
    std::vector<std::uint64_t> shard_generations;
    std::int64_t sessions_active = 0;
    std::uint64_t queue_messages = 0;
    std::string spool_state;  // storage::SpoolState as text; "" without a spool
    std::uint64_t spool_free_bytes = 0;
    std::uint64_t spool_reserve_bytes = 0;
    bool draining = false;
    bool reload_in_progress = false;
    std::string stats_address;  // "" when off
};

nlohmann::json status(const Config& config, const StatusInfo& info);

// ---- reload reports (pure) --------------------------------------------------------

// A config file's settings flattened to "section.key" -> value as TOML text, with
// [[listener]] tables as "listener.NAME.key"; for telling which keys a reload changes.
// Empty when the text is not valid TOML.
using FlatConfig = std::map<std::string, std::string>;
FlatConfig flatten_config(std::string_view toml_text, const std::string& path);

// Keys whose value differs, was added or was removed, excluding listener.* (listeners are
// reported by plan_listeners).
std::vector<std::string> changed_keys(const FlatConfig& before, const FlatConfig& after);

// Which listeners a reload keeps, opens and closes. A listener is identified by its
// address: one whose address is unchanged keeps its sockets (and its queued connections)
// even if its name, role or TLS mode changed; those changes apply to new connections.
struct ListenerPlan {
    std::vector<std::size_t> added;    // indexes into the new config's listeners
    std::vector<std::size_t> removed;  // indexes into the old config's listeners
    std::vector<std::size_t> changed;  // new indexes of kept listeners whose settings changed
};
ListenerPlan plan_listeners(const Config& before, const Config& after);

// Keys that cannot change without a restart; each difference is an error message.
std::vector<std::string> restart_only_changes(const Config& before, const Config& after);

// Identity of a published map file (inode, size, mtime), to tell which maps a reload saw
// change. Absent maps have no stamp.
using MapStamps = std::map<std::string, std::string>;
MapStamps stamp_maps(const std::string& maps_dir);
std::vector<std::string> changed_maps(const MapStamps& before, const MapStamps& after);

// ---- the socket server ------------------------------------------------------------

class ControlServer {
  public:
    // Completes one request (call it exactly once, on the loop thread, now or later).
    using Respond = std::function<void(nlohmann::json reply)>;
    using Handler = std::function<void(Request request, Respond respond)>;

    ControlServer(uv_loop_t* loop, Handler handler);
    ControlServer(const ControlServer&) = delete;
    ControlServer& operator=(const ControlServer&) = delete;
    ~ControlServer();

    // Binds `path` (mode 0660) and serves it. A stale socket file is removed first; a
    // socket someone answers on, or a file that is not a socket, is an error. Returns ""
    // or the error.
    std::string listen(const std::string& path);
    // Stops listening, removes the socket file, closes every client.
    void close();

    std::size_t clients() const { return clients_.size(); }
    std::uint64_t evicted() const { return evicted_; }
    const std::string& path() const { return path_; }

  private:
    struct Client;

    static void on_connection(uv_stream_t* server, int status);
    static void on_read(uv_stream_t* s, ssize_t n, const uv_buf_t* buf);
    void process(Client& c);
    void write(Client& c, std::string text);
    void close_client(Client& c);
    void update_reading(Client& c);
    void maybe_finish(Client& c);
    // Room for one more client of `uid`: false when every candidate is busy.
    bool make_room(std::uint32_t uid);

    uv_loop_t* loop_;
    Handler handler_;
    uv_pipe_t* pipe_ = nullptr;
    std::string path_;
    std::uint64_t socket_inode_ = 0;
    std::map<std::uint64_t, Client*> clients_;      // by id: in the order they connected
    std::map<std::uint32_t, std::size_t> per_uid_;  // admitted clients by peer uid
    std::size_t admitted_ = 0;
    std::uint64_t evicted_ = 0;
    FloodLog evict_log_{loop_, "control_evicted", "uid", "evicted"};
    std::uint64_t refused_ = 0;  // peers of another uid, likewise
    std::uint64_t refused_logged_ = 0;
    std::uint64_t last_refused_log_ms_ = 0;
    std::uint64_t next_id_ = 1;
    std::shared_ptr<int> alive_ = std::make_shared<int>(0);  // Respond checks it
};

}  // namespace sluice::control
