#include "common/config.hpp"

#include <toml++/toml.h>

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <functional>
#include <set>
#include <sstream>
#include <thread>
#include <variant>

#include "common/ascii.hpp"

namespace sluice {
namespace {

namespace fs = std::filesystem;

enum class Kind {
    boolean,
    integer,
    string,
    path,
    duration,
    size,
    string_list,
    duration_list,
    choice,
    sockaddr,
    cidr_list
};

std::string_view kind_name(Kind k) {
    switch (k) {
        case Kind::boolean:
            return "boolean";
        case Kind::integer:
            return "integer";
        case Kind::string:
            return "string";
        case Kind::path:
            return "path";
        case Kind::duration:
            return "duration";
        case Kind::size:
            return "size";
        case Kind::string_list:
            return "list of strings";
        case Kind::duration_list:
            return "list of durations";
        case Kind::choice:
            return "string";
        case Kind::sockaddr:
            return "IP:PORT";
        case Kind::cidr_list:
            return "list of CIDRs";
    }
    return "?";
}

// A parsed value of any kind; the setter of each key picks the member it needs.
struct Value {
    bool b = false;
    std::int64_t i = 0;
    std::uint64_t u = 0;
    Millis d{0};
    std::string s;
    std::vector<std::string> list;
    std::vector<Millis> durations;
    std::vector<Cidr> cidrs;
    std::optional<SockAddr> addr;
};

template <typename Target>
struct Key {
    std::string_view section;  // "" for listener keys
    std::string_view name;
    Kind kind;
    std::string_view fallback;  // default, written as in the file; "" means required/empty
    std::int64_t min;           // integer: value; duration: ms; size: bytes
    std::int64_t max;
    std::string_view choices;  // "a|b|c" for Kind::choice
    std::string_view doc;
    void (*apply)(Target&, const Value&);
};

constexpr std::int64_t kMax = INT64_MAX;

// clang-format off
const Key<Config> config_keys[] = {
    {"server", "hostname", Kind::string, "", 0, 255, "", "name in the greeting and Received: header (default: the host name)",
        [](Config& c, const Value& v) { c.server.hostname = v.s; }},
    {"server", "shards", Kind::integer, "0", 0, 256, "", "worker threads, one loop each; 0: one per core",
        [](Config& c, const Value& v) { c.server.shards = static_cast<unsigned>(v.i); }},
    {"server", "max_connections", Kind::integer, "10000", 1, 1'000'000, "", "concurrent SMTP sessions over all listeners",
        [](Config& c, const Value& v) { c.server.max_connections = static_cast<std::uint32_t>(v.i); }},
    {"server", "max_connections_per_ip", Kind::integer, "50", 1, 1'000'000, "", "concurrent sessions from one client address",
        [](Config& c, const Value& v) { c.server.max_connections_per_ip = static_cast<std::uint32_t>(v.i); }},
    {"server", "nat_router", Kind::string, "", 0, 64, "", "address of a NAT router in front of the host; must not be privileged",
        [](Config& c, const Value& v) { c.server.nat_router = v.s; }},
    {"server", "user", Kind::string, "sluice", 1, 32, "", "started as root: the user sluiced serves as, once listeners, files and control socket are open",
        [](Config& c, const Value& v) { c.server.user = v.s; }},
    {"server", "group", Kind::string, "sluice", 1, 32, "", "started as root: the group sluiced serves as (supplementary groups: the user's own)",
        [](Config& c, const Value& v) { c.server.group = v.s; }},
    {"server", "allow_root", Kind::boolean, "false", 0, 0, "", "serve as root (server.user resolves to uid 0); refused otherwise",
        [](Config& c, const Value& v) { c.server.allow_root = v.b; }},

    {"tls", "certificate", Kind::path, "", 0, 0, "", "PEM certificate chain, leaf first",
        [](Config& c, const Value& v) { c.tls.certificate = v.s; }},
    {"tls", "key", Kind::path, "", 0, 0, "", "PEM private key of the leaf certificate",
        [](Config& c, const Value& v) { c.tls.key = v.s; }},
    {"tls", "ca_file", Kind::path, "", 0, 0, "", "PEM CAs that verify next hops of starttls=required routes (none: encrypted, unverified)",
        [](Config& c, const Value& v) { c.tls.ca_file = v.s; }},

    {"limits", "message_size", Kind::size, "25MiB", 1024, 1ll << 40, "", "largest message accepted (RFC 1870 SIZE)",
        [](Config& c, const Value& v) { c.limits.message_size = v.u; }},
    {"limits", "recipients", Kind::integer, "100", 1, 100'000, "", "recipients per transaction (RFC 5321 §4.5.3.1.8: at least 100)",
        [](Config& c, const Value& v) { c.limits.recipients = static_cast<std::uint32_t>(v.i); }},
    {"limits", "command_timeout", Kind::duration, "5m", 1000, 3'600'000, "", "idle time allowed between commands (RFC 5321 §4.5.3.2)",
        [](Config& c, const Value& v) { c.limits.command_timeout = v.d; }},
    {"limits", "data_timeout", Kind::duration, "10m", 1000, 3'600'000, "", "whole-DATA deadline (RFC 5321 §4.5.3.2.6)",
        [](Config& c, const Value& v) { c.limits.data_timeout = v.d; }},
    {"limits", "command_deadline", Kind::duration, "1m", 1000, 3'600'000, "", "time allowed to send one command line, however it trickles in, and for a run of junk commands (NOOP, RSET, HELP, VRFY, repeated EHLO/HELO; MAIL and RCPT do not end it) between transactions",
        [](Config& c, const Value& v) { c.limits.command_deadline = v.d; }},
    {"limits", "min_data_rate", Kind::size, "1KiB", 0, 1ll << 30, "", "slowest average DATA rate per second before 421 4.4.2",
        [](Config& c, const Value& v) { c.limits.min_data_rate = v.u; }},
    {"limits", "max_errors", Kind::integer, "10", 1, 1000, "", "errors in a session before 421 and close",
        [](Config& c, const Value& v) { c.limits.max_errors = static_cast<std::uint32_t>(v.i); }},
    {"limits", "junk_commands", Kind::integer, "100", 1, 100'000, "", "commands that do not advance a transaction (NOOP, RSET, HELP, VRFY, a repeated EHLO/HELO) in a session before 421 4.7.0 and close; a message accepted forgives them",
        [](Config& c, const Value& v) { c.limits.junk_commands = static_cast<std::uint32_t>(v.i); }},
    {"limits", "max_hops", Kind::integer, "50", 5, 500, "", "Received: headers before a message is refused as a loop (RFC 5321 §6.3)",
        [](Config& c, const Value& v) { c.limits.max_hops = static_cast<std::uint32_t>(v.i); }},
    {"limits", "shutdown_grace", Kind::duration, "30s", 0, 3'600'000, "", "how long DATA in flight may finish after SIGTERM",
        [](Config& c, const Value& v) { c.limits.shutdown_grace = v.d; }},

    {"limits", "greeting_delay", Kind::duration, "0s", 0, 60'000, "", "hold the greeting this long; clients talking first are refused (554 5.5.0)",
        [](Config& c, const Value& v) { c.limits.greeting_delay = v.d; }},

    {"limits", "proxy_timeout", Kind::duration, "5s", 3000, 60'000, "", "time a listener with proxy_protocol waits for the balancer's whole PROXY header before it closes the connection (proxy-protocol.txt §2: at least 3 s)",
        [](Config& c, const Value& v) { c.limits.proxy_timeout = v.d; }},

    {"limits", "outbound_connections", Kind::integer, "20", 1, 10'000, "", "concurrent connections to one next hop (over all shards)",
        [](Config& c, const Value& v) { c.limits.outbound_connections = static_cast<std::uint32_t>(v.i); }},
    {"limits", "outbound_connections_total", Kind::integer, "400", 1, 100'000, "", "concurrent outbound connections over all next hops and MX destinations (over all shards); an idle one is closed when another destination needs the room",
        [](Config& c, const Value& v) { c.limits.outbound_connections_total = static_cast<std::uint32_t>(v.i); }},
    {"limits", "outbound_queue_memory", Kind::size, "128MiB", 64 * 1024, 1ll << 40, "", "message data kept in memory for one next hop (over all shards) while it waits for a connection; more waits on disk and is read back when there is room",
        [](Config& c, const Value& v) { c.limits.outbound_queue_memory = v.u; }},

    {"relay", "enabled", Kind::boolean, "true", 0, 0, "", "relaying at all; false denies every non-local recipient (D112)",
        [](Config& c, const Value& v) { c.relay.enabled = v.b; }},
    {"relay", "authenticated", Kind::boolean, "true", 0, 0, "", "relay for authenticated senders (G108)",
        [](Config& c, const Value& v) { c.relay.authenticated = v.b; }},
    {"relay", "privileged_networks", Kind::boolean, "false", 0, 0, "", "relay for clients in map privileged_networks (G107)",
        [](Config& c, const Value& v) { c.relay.privileged_networks = v.b; }},
    {"relay", "local_senders", Kind::boolean, "false", 0, 0, "", "relay for local sender addresses (G106; forgeable, discouraged)",
        [](Config& c, const Value& v) { c.relay.local_senders = v.b; }},
    {"relay", "open", Kind::boolean, "false", 0, 0, "", "relay for everyone (G110); needs acknowledge_open_relay",
        [](Config& c, const Value& v) { c.relay.open = v.b; }},
    {"relay", "acknowledge_open_relay", Kind::boolean, "false", 0, 0, "", "the operator's written consent to open mode",
        [](Config& c, const Value& v) { c.relay.acknowledge_open_relay = v.b; }},

    {"connections", "filter", Kind::choice, "off", 0, 0, "off|allow-listed|deny-listed", "IP filter at connect, map connection_filter (C130)",
        [](Config& c, const Value& v) {
            c.connections.filter = v.s == "allow-listed" ? FilterMode::allow_listed
                                 : v.s == "deny-listed"  ? FilterMode::deny_listed
                                                         : FilterMode::off; }},

    {"rates", "interval", Kind::duration, "1m", 1000, 86'400'000, "", "the interval of every rates.*_per_* limit (GCRA: a fresh key may use the whole limit at once, then one event per interval/limit)",
        [](Config& c, const Value& v) { c.rates.interval = v.d; }},
    {"rates", "connections_per_client", Kind::integer, "0", 0, 10'000'000, "", "connections per rates.interval from one client address; over it: 421 4.7.0 at the greeting (R150); 0: no limit",
        [](Config& c, const Value& v) { c.rates.connections_per_client = static_cast<std::uint32_t>(v.i); }},
    {"rates", "connections_per_network", Kind::integer, "0", 0, 10'000'000, "", "connections per rates.interval from one client network (IPv4 /24, IPv6 /64); over it: 421 4.7.0 at the greeting (R150); 0: no limit",
        [](Config& c, const Value& v) { c.rates.connections_per_network = static_cast<std::uint32_t>(v.i); }},
    {"rates", "messages_per_client", Kind::integer, "0", 0, 10'000'000, "", "messages (MAIL commands) per rates.interval from one client address; over it: 450 4.7.1 at MAIL (R151); 0: no limit",
        [](Config& c, const Value& v) { c.rates.messages_per_client = static_cast<std::uint32_t>(v.i); }},
    {"rates", "messages_per_network", Kind::integer, "0", 0, 10'000'000, "", "messages (MAIL commands) per rates.interval from one client network (IPv4 /24, IPv6 /64); over it: 450 4.7.1 at MAIL (R151); 0: no limit",
        [](Config& c, const Value& v) { c.rates.messages_per_network = static_cast<std::uint32_t>(v.i); }},
    {"rates", "recipients_per_client", Kind::integer, "0", 0, 10'000'000, "", "recipients (RCPT commands) per rates.interval from one client address; over it: 450 4.7.1 at RCPT (R152); 0: no limit",
        [](Config& c, const Value& v) { c.rates.recipients_per_client = static_cast<std::uint32_t>(v.i); }},
    {"rates", "recipients_per_network", Kind::integer, "0", 0, 10'000'000, "", "recipients (RCPT commands) per rates.interval from one client network (IPv4 /24, IPv6 /64); over it: 450 4.7.1 at RCPT (R152); 0: no limit",
        [](Config& c, const Value& v) { c.rates.recipients_per_network = static_cast<std::uint32_t>(v.i); }},
    {"rates", "errors_per_client", Kind::integer, "0", 0, 10'000'000, "", "error replies (4xx/5xx) per rates.interval from one client address; over it: 421 4.7.0 and close (R153); 0: no limit",
        [](Config& c, const Value& v) { c.rates.errors_per_client = static_cast<std::uint32_t>(v.i); }},
    {"rates", "errors_per_network", Kind::integer, "0", 0, 10'000'000, "", "error replies (4xx/5xx) per rates.interval from one client network (IPv4 /24, IPv6 /64); over it: 421 4.7.0 and close (R153); 0: no limit",
        [](Config& c, const Value& v) { c.rates.errors_per_network = static_cast<std::uint32_t>(v.i); }},
    {"rates", "action", Kind::choice, "refuse", 0, 0, "refuse|tarpit", "over a limit: refuse at once, or tarpit: hold the refusal for rates.tarpit_delay first",
        [](Config& c, const Value& v) { c.rates.tarpit = v.s == "tarpit"; }},
    {"rates", "tarpit_delay", Kind::duration, "5s", 250, 300'000, "", "how long action = \"tarpit\" holds a refusal (a timer, 250 ms resolution)",
        [](Config& c, const Value& v) { c.rates.tarpit_delay = v.d; }},
    {"rates", "table_size", Kind::integer, "65536", 256, 16'777'216, "", "keys the counters remember (fixed memory, about 40 bytes each; read at start); more keys active in one interval forget the oldest",
        [](Config& c, const Value& v) { c.rates.table_size = static_cast<std::uint32_t>(v.i); }},

    {"domains", "local", Kind::string_list, "", 0, 0, "", "domains served here (also map local_domains)",
        [](Config& c, const Value& v) { c.domains.local = v.list; }},

    {"maps", "dir", Kind::path, "/var/lib/sluice/maps", 0, 0, "", "directory of the LMDB maps",
        [](Config& c, const Value& v) { c.maps.dir = v.s; }},

    {"spool", "dir", Kind::path, "/var/spool/sluice", 0, 0, "", "spool directory",
        [](Config& c, const Value& v) { c.spool.dir = v.s; }},
    {"spool", "retry", Kind::duration_list, R"(["1m", "5m", "15m", "1h", "4h"])", 1000, 86'400'000, "", "delays between delivery attempts; the last repeats",
        [](Config& c, const Value& v) { c.spool.retry = v.durations; }},
    {"spool", "max_age", Kind::duration, "5d", 60'000, 30ll * 86'400'000, "", "age at which an undeliverable message bounces",
        [](Config& c, const Value& v) { c.spool.max_age = v.d; }},

    {"spool", "max_size", Kind::size, "0B", 0, 1ll << 50, "", "spool size at which new mail gets 452 4.3.1; 0B: no limit",
        [](Config& c, const Value& v) { c.spool.max_size = v.u; }},
    {"spool", "min_free", Kind::size, "256MiB", 0, 1ll << 50, "", "free disk space below which new mail gets 452 4.3.1",
        [](Config& c, const Value& v) { c.spool.min_free = v.u; }},
    {"spool", "reserve", Kind::size, "4MiB", 64 * 1024, 1ll << 30, "", "disk space the spool holds back (the file DIR/reserve) and gives up when the disk fills, so that delivery outcomes can still be recorded (a message the next hop took is not sent again after a restart)",
        [](Config& c, const Value& v) { c.spool.reserve = v.u; }},
    {"spool", "syncs_in_flight", Kind::integer, "1", 1, 16, "", "group-commit batches in fdatasync at once (1: fewest fsyncs; more: lower latency)",
        [](Config& c, const Value& v) { c.spool.syncs_in_flight = static_cast<std::uint32_t>(v.i); }},
    {"spool", "commit_delay", Kind::duration, "1ms", 0, 100, "", "how long a commit may wait for the commits of other sessions already in a transaction, to share one fdatasync; \"0ms\": never wait",
        [](Config& c, const Value& v) { c.spool.commit_delay = v.d; }},

    {"control", "socket", Kind::path, "/run/sluice/control.sock", 0, 0, "", "Unix socket of sluicectl",
        [](Config& c, const Value& v) { c.control.socket = v.s; }},

    {"dns", "servers", Kind::string_list, "", 0, 0, "", "DNS servers asked by every shard (IP, IP:PORT or [IPv6]:PORT); empty: those of /etc/resolv.conf",
        [](Config& c, const Value& v) { c.dns.servers = v.list; }},
    {"dns", "timeout", Kind::duration, "5s", 100, 60'000, "", "how long one try of a query waits for its answer",
        [](Config& c, const Value& v) { c.dns.timeout = v.d; }},
    {"dns", "attempts", Kind::integer, "3", 1, 10, "", "tries of a query (over the servers in turn) before it fails as temporary",
        [](Config& c, const Value& v) { c.dns.attempts = static_cast<std::uint32_t>(v.i); }},
    {"dns", "cache_entries", Kind::integer, "100000", 0, 10'000'000, "", "answers each shard's cache keeps (0: no cache)",
        [](Config& c, const Value& v) { c.dns.cache_entries = static_cast<std::uint32_t>(v.i); }},
    {"dns", "cache_memory", Kind::size, "64MiB", 0, 1ll << 34, "", "memory each shard's cache may hold; the least recently used answers go first",
        [](Config& c, const Value& v) { c.dns.cache_memory = v.u; }},
    {"dns", "min_ttl", Kind::duration, "0s", 0, 3'600'000, "", "answers are cached at least this long (TTL floor)",
        [](Config& c, const Value& v) { c.dns.min_ttl = v.d; }},
    {"dns", "max_ttl", Kind::duration, "1d", 1000, 7ll * 86'400'000, "", "answers are cached at most this long (TTL ceiling, negative answers too)",
        [](Config& c, const Value& v) { c.dns.max_ttl = v.d; }},
    {"dns", "prefer", Kind::choice, "ipv6", 0, 0, "ipv6|ipv4", "address family tried first for each MX host",
        [](Config& c, const Value& v) { c.dns.prefer_ipv4 = v.s == "ipv4"; }},
    {"dns", "mx_addresses", Kind::integer, "5", 1, 50, "", "addresses (over the MX hosts by preference) tried per delivery attempt before the mail is deferred",
        [](Config& c, const Value& v) { c.dns.mx_addresses = static_cast<std::uint32_t>(v.i); }},

    {"stats", "address", Kind::string, "", 0, 0, "", "IP:PORT of the HTTP stats endpoint; empty: off",
        [](Config& c, const Value& v) { c.stats.address_text = v.s; }},
};

const Key<ListenerConfig> listener_keys[] = {
    {"", "name", Kind::string, "", 1, 64, "", "unique name, used in logs and metrics",
        [](ListenerConfig& l, const Value& v) { l.name = v.s; }},
    {"", "address", Kind::sockaddr, "", 0, 0, "", "IP:PORT or [IPv6]:PORT to listen on",
        [](ListenerConfig& l, const Value& v) { l.address = *v.addr; l.address_text = v.s; }},
    {"", "role", Kind::choice, "mx", 0, 0, "mx|submission", "mx: inbound, no AUTH; submission: AUTH after TLS",
        [](ListenerConfig& l, const Value& v) { l.role = v.s == "submission" ? Role::submission : Role::mx; }},
    {"", "tls", Kind::choice, "off", 0, 0, "off|optional|required|implicit", "TLS mode",
        [](ListenerConfig& l, const Value& v) {
            l.tls = v.s == "optional" ? TlsMode::optional : v.s == "required" ? TlsMode::required
                  : v.s == "implicit" ? TlsMode::implicit : TlsMode::off; }},
    {"", "proxy_protocol", Kind::cidr_list, "[]", 0, 0, "", "CIDRs of the load balancers this listener takes connections from: only they may connect, and each connection must start with a PROXY v1/v2 header naming the client; empty: off",
        [](ListenerConfig& l, const Value& v) { l.proxy_protocol = v.cidrs; }},
    {"", "auth_without_tls", Kind::boolean, "false", 0, 0, "", "offer AUTH in plaintext (loopback addresses only)",
        [](ListenerConfig& l, const Value& v) { l.auth_without_tls = v.b; }},
    {"", "sender_login_match", Kind::boolean, "false", 0, 0, "", "authenticated users may only send as their own addresses",
        [](ListenerConfig& l, const Value& v) { l.sender_login_match = v.b; }},
};
// clang-format on

class Loader {
  public:
    Loader(std::string path, std::string dir) : path_(std::move(path)), dir_(std::move(dir)) {}

    std::vector<Diagnostic> diags;

    SourceRef at(const toml::source_region& r) const {
        return {path_, static_cast<int>(r.begin.line), static_cast<int>(r.begin.column)};
    }
    void error(const toml::source_region& r, std::string msg) {
        diags.push_back({Diagnostic::Severity::error, at(r), std::move(msg)});
    }
    void warn(const toml::source_region& r, std::string msg) {
        diags.push_back({Diagnostic::Severity::warning, at(r), std::move(msg)});
    }
    void error_top(std::string msg) {
        diags.push_back({Diagnostic::Severity::error, {path_, 1, 1}, std::move(msg)});
    }

    std::string resolve(const std::string& p) const {
        if (p.empty() || p.front() == '/') {
            return p;
        }
        return (fs::path(dir_) / p).lexically_normal().string();
    }

    // Converts one TOML node to a Value of `kind`, checking type and bounds.
    template <typename Target>
    std::optional<Value> convert(const Key<Target>& k, const toml::node& n,
                                 const std::string& full) {
        Value v;
        auto type_error = [&] {
            error(n.source(), full + ": expected " + std::string(kind_name(k.kind)));
            return std::nullopt;
        };
        auto range_error = [&](const std::string& shown) {
            error(n.source(), full + ": " + shown + " is out of range");
            return std::nullopt;
        };
        switch (k.kind) {
            case Kind::boolean:
                if (!n.is_boolean()) {
                    return type_error();
                }
                v.b = n.as_boolean()->get();
                return v;
            case Kind::integer:
                if (!n.is_integer()) {
                    return type_error();
                }
                v.i = n.as_integer()->get();
                if (v.i < k.min || v.i > k.max) {
                    return range_error(std::to_string(v.i) + " (allowed " + std::to_string(k.min) +
                                       ".." + std::to_string(k.max) + ")");
                }
                return v;
            case Kind::string:
            case Kind::path:
            case Kind::choice:
            case Kind::sockaddr: {
                if (!n.is_string()) {
                    return type_error();
                }
                v.s = n.as_string()->get();
                if (k.kind == Kind::string && k.max > 0 &&
                    (v.s.size() < static_cast<std::size_t>(k.min) ||
                     v.s.size() > static_cast<std::size_t>(k.max))) {
                    return range_error("length " + std::to_string(v.s.size()));
                }
                if (k.kind == Kind::path) {
                    v.s = resolve(v.s);
                }
                if (k.kind == Kind::choice) {
                    std::string_view cs = k.choices;
                    bool found = false;
                    while (!cs.empty()) {
                        auto bar = cs.find('|');
                        if (cs.substr(0, bar) == v.s) {
                            found = true;
                        }
                        cs = bar == std::string_view::npos ? "" : cs.substr(bar + 1);
                    }
                    if (!found) {
                        error(n.source(),
                              full + ": \"" + v.s + "\" is not one of " + std::string(k.choices));
                        return std::nullopt;
                    }
                }
                if (k.kind == Kind::sockaddr) {
                    std::string e;
                    v.addr = parse_sockaddr(v.s, e);
                    if (!v.addr) {
                        error(n.source(), full + ": " + e);
                        return std::nullopt;
                    }
                }
                return v;
            }
            case Kind::duration:
            case Kind::size: {
                if (!n.is_string()) {
                    error(n.source(), full + ": expected a " + std::string(kind_name(k.kind)) +
                                          " with a unit, as a string (e.g. \"" +
                                          (k.kind == Kind::duration ? "5m" : "25MiB") + "\")");
                    return std::nullopt;
                }
                std::string e;
                const auto& s = n.as_string()->get();
                if (k.kind == Kind::duration) {
                    auto d = parse_duration(s, e);
                    if (!d) {
                        error(n.source(), full + ": " + e);
                        return std::nullopt;
                    }
                    if (d->count() < k.min || d->count() > k.max) {
                        return range_error("\"" + s + "\" (allowed " +
                                           format_duration(Millis(k.min)) + ".." +
                                           format_duration(Millis(k.max)) + ")");
                    }
                    v.d = *d;
                } else {
                    auto z = parse_size(s, e);
                    if (!z) {
                        error(n.source(), full + ": " + e);
                        return std::nullopt;
                    }
                    if (*z < static_cast<std::uint64_t>(k.min) ||
                        *z > static_cast<std::uint64_t>(k.max)) {
                        return range_error("\"" + s + "\" (allowed " + format_size(k.min) + ".." +
                                           format_size(k.max) + ")");
                    }
                    v.u = *z;
                }
                return v;
            }
            case Kind::string_list:
            case Kind::duration_list:
            case Kind::cidr_list: {
                const auto* arr = n.as_array();
                if (!arr) {
                    return type_error();
                }
                bool ok = true;
                for (const auto& el : *arr) {
                    if (!el.is_string()) {
                        error(el.source(), full + ": expected a string in the list");
                        ok = false;
                        continue;
                    }
                    const auto& s = el.as_string()->get();
                    std::string e;
                    if (k.kind == Kind::string_list) {
                        v.list.push_back(s);
                    } else if (k.kind == Kind::duration_list) {
                        auto d = parse_duration(s, e);
                        if (!d) {
                            error(el.source(), full + ": " + e);
                            ok = false;
                        } else if (d->count() < k.min || d->count() > k.max) {
                            error(el.source(), full + ": \"" + s + "\" is out of range");
                            ok = false;
                        } else {
                            v.durations.push_back(*d);
                        }
                    } else {
                        auto c = parse_cidr(s, e);
                        if (!c) {
                            error(el.source(), full + ": " + e);
                            ok = false;
                        } else {
                            v.cidrs.push_back(*c);
                        }
                    }
                }
                if (!ok) {
                    return std::nullopt;
                }
                return v;
            }
        }
        return std::nullopt;
    }

    // Applies the keys of one section (or one [[listener]]) from `tbl`, then the defaults
    // of the keys that were not given. Unknown keys are errors.
    template <typename Target, std::size_t N>
    void apply_section(Target& target, const Key<Target> (&keys)[N], std::string_view section,
                       const toml::table* tbl, const std::string& prefix,
                       std::map<std::string, SourceRef>* sources) {
        std::set<std::string_view> seen;
        if (tbl) {
            for (auto&& [name, node] : *tbl) {
                const Key<Target>* key = nullptr;
                for (const auto& k : keys) {
                    if (k.section == section && k.name == name.str()) {
                        key = &k;
                    }
                }
                std::string full = prefix + std::string(name.str());
                if (!key) {
                    error(name.source(), "unknown key \"" + full + "\"");
                    continue;
                }
                seen.insert(key->name);
                if (sources) {
                    (*sources)[full] = at(node.source());
                }
                if (auto v = convert(*key, node, full)) {
                    key->apply(target, *v);
                }
            }
        }
        for (const auto& k : keys) {
            if (k.section != section || seen.count(k.name)) {
                continue;
            }
            if (k.kind == Kind::sockaddr || (section.empty() && k.name == "name")) {
                if (tbl) {
                    error(tbl->source(),
                          prefix + std::string(k.name) + ": required key is missing");
                }
                continue;
            }
            apply_default(target, k);
        }
    }

    template <typename Target>
    void apply_default(Target& target, const Key<Target>& k) {
        // Defaults are written as TOML values and go through the same conversion, so the
        // schema is the one place they are stated.
        std::string text = std::string("v = ");
        if (k.kind == Kind::boolean || k.kind == Kind::integer || k.kind == Kind::duration_list ||
            k.kind == Kind::cidr_list || k.kind == Kind::string_list) {
            text += k.fallback.empty() ? "[]" : std::string(k.fallback);
        } else {
            text += "\"" + std::string(k.fallback) + "\"";
        }
        auto t = toml::parse(text);
        Value v;
        if (k.kind == Kind::path && k.fallback.empty()) {
            k.apply(target, v);
            return;
        }
        Loader quiet(path_, dir_);
        if (auto cv = quiet.convert(k, *t.get("v"), std::string(k.name))) {
            k.apply(target, *cv);
        }
    }

  private:
    std::string path_;
    std::string dir_;
};

// A domain as the policy compares it: lower-case, no trailing dot (policy/address.hpp).
bool normalise_domain(std::string& d) {
    d = ascii::lower(d);
    if (!d.empty() && d.back() == '.') {
        d.pop_back();
    }
    if (d.empty() || d.size() > 255) {
        return false;
    }
    for (char c : d) {
        if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.') &&
            static_cast<unsigned char>(c) < 0x80) {
            return false;
        }
    }
    return d.front() != '.' && d.find("..") == std::string::npos;
}

std::optional<Transport> parse_transport(const std::string& text, const Loader& loader,
                                         std::string& error) {
    Transport t;
    t.text = text;
    if (text.rfind("maildir:", 0) == 0) {
        t.kind = Transport::Kind::maildir;
        t.path = loader.resolve(text.substr(8));
        if (text.size() == 8) {
            error = "maildir: needs a path";
            return std::nullopt;
        }
        return t;
    }
    if (text == "mx" || text.rfind("mx?", 0) == 0) {
        // Delivery by the recipient domain's MX records (RFC 5321 §5.1), on port 25.
        t.kind = Transport::Kind::mx;
        t.port = 25;
        std::stringstream qs(text.size() > 3 ? text.substr(3) : std::string());
        std::string item;
        while (std::getline(qs, item, '&')) {
            if (item == "starttls=required") {
                t.starttls = TlsMode::required;
            } else if (item == "starttls=optional") {
                t.starttls = TlsMode::optional;
            } else if (item == "starttls=off") {
                t.starttls = TlsMode::off;
            } else {
                error = "unknown option \"" + item + "\" in \"" + text +
                        "\" (mx takes starttls=required|optional|off)";
                return std::nullopt;
            }
        }
        return t;
    }
    if (text.rfind("smtp://", 0) == 0) {
        t.kind = Transport::Kind::smtp;
        std::string rest = text.substr(7);
        std::string query;
        if (auto q = rest.find('?'); q != std::string::npos) {
            query = rest.substr(q + 1);
            rest = rest.substr(0, q);
        }
        std::string e;
        auto colon = rest.rfind(':');
        if (colon == std::string::npos || (rest.front() == '[' && rest[colon - 1] != ']')) {
            error = "smtp:// needs HOST:PORT in \"" + text + "\"";
            return std::nullopt;
        }
        t.host = rest.substr(0, colon);
        if (t.host.size() > 2 && t.host.front() == '[') {
            t.host = t.host.substr(1, t.host.size() - 2);
        }
        try {
            std::size_t used = 0;
            int port = std::stoi(rest.substr(colon + 1), &used);
            if (used != rest.size() - colon - 1 || port < 1 || port > 65535) {
                throw std::out_of_range("port");
            }
            t.port = static_cast<std::uint16_t>(port);
        } catch (const std::exception&) {
            error = "bad port in \"" + text + "\"";
            return std::nullopt;
        }
        std::stringstream qs(query);
        std::string item;
        while (std::getline(qs, item, '&')) {
            if (item == "starttls=required") {
                t.starttls = TlsMode::required;
            } else if (item == "starttls=optional") {
                t.starttls = TlsMode::optional;
            } else if (item == "starttls=off") {
                t.starttls = TlsMode::off;
            } else if (item == "inline=true") {
                t.inline_delivery = true;
            } else if (item == "inline=false") {
                t.inline_delivery = false;
            } else {
                error = "unknown option \"" + item + "\" in \"" + text +
                        "\" (starttls=required|optional|off, inline=true|false)";
                return std::nullopt;
            }
        }
        return t;
    }
    error = "unknown transport \"" + text + "\" (use smtp://HOST:PORT, mx or maildir:PATH)";
    return std::nullopt;
}

bool is_loopback(const IpAddr& ip) {
    if (ip.v4) {
        return ip.bytes[12] == 127;
    }
    static constexpr std::array<std::uint8_t, 16> one = {0, 0, 0, 0, 0, 0, 0, 0,
                                                         0, 0, 0, 0, 0, 0, 0, 1};
    return ip.bytes == one;
}

LoadResult finish(Loader& loader, const toml::table& root, const std::string& path) {
    auto cfg = std::make_shared<Config>();
    cfg->path = path;
    cfg->dir = fs::path(path).parent_path().string();

    static constexpr std::string_view sections[] = {"server",      "tls",     "limits", "relay",
                                                    "connections", "domains", "maps",   "spool",
                                                    "control",     "stats",   "dns",     "rates"};
    for (auto&& [name, node] : root) {
        auto n = name.str();
        bool known = n == "listener" || n == "routes" ||
                     std::find(std::begin(sections), std::end(sections), n) != std::end(sections);
        if (!known) {
            loader.error(name.source(), "unknown section \"" + std::string(n) + "\"");
        } else if (n != "listener" && !node.is_table()) {
            loader.error(node.source(), "\"" + std::string(n) + "\" must be a table");
        }
    }
    for (auto s : sections) {
        const toml::table* tbl = root.get_as<toml::table>(s);
        loader.apply_section(*cfg, config_keys, s, tbl, std::string(s) + ".", &cfg->sources);
    }

    // server
    if (cfg->server.hostname.empty()) {
        char buf[256] = {};
        gethostname(buf, sizeof buf - 1);
        cfg->server.hostname = buf[0] ? buf : "localhost";
    }
    if (cfg->server.shards == 0) {
        cfg->server.shards = std::max(1u, std::thread::hardware_concurrency());
    }
    if (!cfg->server.nat_router.empty() && !parse_ip(cfg->server.nat_router)) {
        loader.error(root["server"]["nat_router"].node()->source(),
                     "server.nat_router: not an IP address");
    }

    // listeners
    if (const auto* arr = root.get_as<toml::array>("listener")) {
        std::set<std::string> names, addrs;
        for (const auto& el : *arr) {
            const auto* t = el.as_table();
            if (!t) {
                loader.error(el.source(), "listener: expected [[listener]] tables");
                continue;
            }
            ListenerConfig l;
            l.where = loader.at(t->source());
            std::size_t before = loader.diags.size();
            loader.apply_section(l, listener_keys, "", t, "listener.", nullptr);
            if (loader.diags.size() != before) {
                continue;
            }
            if (!names.insert(l.name).second) {
                loader.error(t->source(), "listener \"" + l.name + "\": duplicate name");
            }
            if (!addrs.insert(format_sockaddr(l.address)).second) {
                loader.error(t->source(),
                             "listener \"" + l.name + "\": duplicate address " + l.address_text);
            }
            if (l.auth_without_tls && !is_loopback(l.address.ip)) {
                loader.error(t->source(), "listener \"" + l.name +
                                              "\": auth_without_tls is only allowed on loopback");
            }
            for (const auto& c : l.proxy_protocol) {
                // proxy-protocol.txt §5: a header is only trusted from known proxies; a
                // catch-all would let any client name its own address (and its privileges).
                if (c.family_prefix() == 0) {
                    loader.error(t->source(), "listener \"" + l.name + "\": proxy_protocol " +
                                                  format_cidr(c) +
                                                  " trusts every peer to name its own address; "
                                                  "list the load balancers");
                }
            }
            if (l.tls != TlsMode::off && (cfg->tls.certificate.empty() || cfg->tls.key.empty())) {
                loader.error(t->source(), "listener \"" + l.name + "\": tls = \"" +
                                              std::string(to_string(l.tls)) +
                                              "\" needs [tls] certificate and key");
            }
            cfg->listeners.push_back(std::move(l));
        }
    } else if (root.contains("listener")) {
        loader.error(root.get("listener")->source(), "listener: expected [[listener]] tables");
    }
    if (cfg->listeners.empty() && !root.contains("listener")) {
        loader.error_top("no [[listener]] configured");
    }

    // domains
    if (const auto* arr = root["domains"]["local"].as_array()) {
        std::size_t i = 0;
        for (auto& d : cfg->domains.local) {
            const auto& src = (*arr)[i++].source();
            if (!normalise_domain(d)) {
                loader.error(src, "domains.local: \"" + d + "\" is not a domain name");
            }
        }
    }

    if (!cfg->tls.ca_file.empty() && !std::ifstream(cfg->tls.ca_file)) {
        loader.error(root["tls"]["ca_file"].node()->source(),
                     "tls.ca_file: cannot read " + cfg->tls.ca_file);
    }

    // routes
    if (const auto* routes = root.get_as<toml::table>("routes")) {
        for (auto&& [name, node] : *routes) {
            Route r;
            r.domain = std::string(name.str());
            r.where = loader.at(name.source());
            if (r.domain != "*" && !normalise_domain(r.domain)) {
                loader.error(name.source(), "routes: \"" + r.domain + "\" is not a domain name");
                continue;
            }
            if (!node.is_string()) {
                loader.error(node.source(), "routes." + r.domain + ": expected a transport string");
                continue;
            }
            std::string e;
            auto t = parse_transport(node.as_string()->get(), loader, e);
            if (!t) {
                loader.error(node.source(), "routes." + r.domain + ": " + e);
                continue;
            }
            r.transport = *t;
            if (t->kind == Transport::Kind::smtp && t->starttls == TlsMode::required) {
                // mbedTLS 2.28 matches certificates by host name only: a next hop given
                // as an address could never verify, so every delivery would defer.
                if (cfg->tls.ca_file.empty()) {
                    loader.warn(node.source(), "routes." + r.domain +
                                                   ": starttls=required without tls.ca_file "
                                                   "encrypts but does not verify the next hop");
                } else if (parse_ip(t->host)) {
                    loader.error(node.source(), "routes." + r.domain +
                                                    ": starttls=required verifies the next hop "
                                                    "against tls.ca_file by host name, not \"" +
                                                    t->host + "\"");
                }
            }
            cfg->sources["routes." + r.domain] = r.where;
            cfg->routes.push_back(std::move(r));
        }
    }

    // relay
    if (cfg->relay.open && !cfg->relay.acknowledge_open_relay) {
        auto* n = root["relay"]["open"].node();
        loader.error(n->source(),
                     "relay.open = true makes this server an open relay; refused unless "
                     "relay.acknowledge_open_relay = true");
    }
    if (cfg->relay.local_senders) {
        auto* n = root["relay"]["local_senders"].node();
        // (Each mx listener it applies to is named by the open-relay lint, policy/lint.cpp.)
        loader.warn(n->source(),
                    "relay.local_senders = true: anyone can forge a local sender address to relay");
    }
    if (cfg->relay.privileged_networks && cfg->server.nat_router.empty()) {
        // Nothing to check here without the map; sluicectl check inspects the map.
    }

    // dns
    if (const auto* arr = root["dns"]["servers"].as_array()) {
        std::size_t i = 0;
        for (const auto& s : cfg->dns.servers) {
            const auto& src = (*arr)[i++].source();
            std::string e;
            if (!parse_ip(s) && !parse_sockaddr(s, e)) {
                loader.error(src, "dns.servers: \"" + s + "\" is not IP, IP:PORT or [IPv6]:PORT");
            }
        }
    }
    if (cfg->dns.min_ttl > cfg->dns.max_ttl) {
        loader.error(root["dns"]["min_ttl"].node()->source(),
                     "dns.min_ttl: longer than dns.max_ttl");
    }

    // stats
    if (!cfg->stats.address_text.empty()) {
        std::string e;
        cfg->stats.address = parse_sockaddr(cfg->stats.address_text, e);
        if (!cfg->stats.address) {
            loader.error(root["stats"]["address"].node()->source(), "stats.address: " + e);
        }
    }

    // control socket: sun_path is 108 bytes and libuv 1.44 truncates silently (unix(7)).
    if (cfg->control.socket.size() > 107) {
        auto* n = root["control"]["socket"].node();
        if (n) {
            loader.error(n->source(), "control.socket: path longer than 107 bytes");
        } else {
            loader.error_top("control.socket: path longer than 107 bytes");
        }
    }

    LoadResult out;
    std::stable_sort(
        loader.diags.begin(), loader.diags.end(), [](const Diagnostic& a, const Diagnostic& b) {
            return std::tie(a.where.line, a.where.column) < std::tie(b.where.line, b.where.column);
        });
    bool failed = std::any_of(loader.diags.begin(), loader.diags.end(), [](const Diagnostic& d) {
        return d.severity == Diagnostic::Severity::error;
    });
    out.diagnostics = std::move(loader.diags);
    if (!failed) {
        out.config = std::move(cfg);
    }
    return out;
}

}  // namespace

std::string Diagnostic::str() const {
    return where.file + ":" + std::to_string(where.line) + ":" + std::to_string(where.column) +
           ": " + (severity == Severity::warning ? "warning: " : "") + message;
}

LoadResult load_config_text(const std::string& text, const std::string& path) {
    std::string abs = fs::absolute(path).lexically_normal().string();
    Loader loader(abs, fs::path(abs).parent_path().string());
    try {
        toml::table root = toml::parse(text, abs);
        return finish(loader, root, abs);
    } catch (const toml::parse_error& e) {
        LoadResult out;
        out.diagnostics.push_back(
            {Diagnostic::Severity::error, loader.at(e.source()), std::string(e.description())});
        return out;
    }
}

LoadResult load_config(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) {
        LoadResult out;
        out.diagnostics.push_back(
            {Diagnostic::Severity::error,
             {path, 0, 0},
             "cannot read config file: " + std::string(std::strerror(errno))});
        return out;
    }
    std::stringstream ss;
    ss << in.rdbuf();
    return load_config_text(ss.str(), path);
}

const Route* Config::route_for(std::string_view domain) const {
    const Route* fallback = nullptr;
    for (const auto& r : routes) {
        if (r.domain == domain) {
            return &r;
        }
        if (r.domain == "*") {
            fallback = &r;
        }
    }
    return fallback;
}

bool Config::is_local_domain(std::string_view domain) const {
    return std::find(domains.local.begin(), domains.local.end(), domain) != domains.local.end();
}

std::string describe_schema() {
    std::string out;
    auto line = [&](std::string name, Kind k, std::string_view def, std::string_view choices,
                    std::string_view doc) {
        out += name;
        out.append(name.size() < 32 ? 32 - name.size() : 1, ' ');
        out += std::string(choices.empty() ? kind_name(k) : choices);
        out += "  default=" + (def.empty() ? std::string("(none)") : std::string(def));
        out += "  " + std::string(doc) + "\n";
    };
    for (const auto& k : config_keys) {
        line(std::string(k.section) + "." + std::string(k.name), k.kind, k.fallback, k.choices,
             k.doc);
    }
    for (const auto& k : listener_keys) {
        line("listener." + std::string(k.name), k.kind, k.fallback, k.choices, k.doc);
    }
    out += "routes.DOMAIN                   smtp://HOST:PORT[?starttls=..] | mx[?starttls=..] | maildir:PATH\n";
    return out;
}

std::string_view to_string(Role r) {
    return r == Role::mx ? "mx" : "submission";
}

std::string_view to_string(TlsMode m) {
    switch (m) {
        case TlsMode::off:
            return "off";
        case TlsMode::optional:
            return "optional";
        case TlsMode::required:
            return "required";
        case TlsMode::implicit:
            return "implicit";
    }
    return "?";
}

}  // namespace sluice
