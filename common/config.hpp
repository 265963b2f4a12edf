#pragma once
// The configuration: a TOML file (docs/config.md) parsed, validated and normalised into
// an immutable snapshot. Every key is declared once, in config.cpp's schema tables, with
// its type, default, bounds and a line of documentation. Every problem is reported as
// `FILE:LINE:COL: message`, all of them, sorted by position.
//
// Trust: reads an operator-owned file; exceptions are not used on the data path, only
// here (load time), and never escape `load_config`.

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/net.hpp"
#include "common/units.hpp"

namespace sluice {

struct SourceRef {
    std::string file;
    int line = 0;
    int column = 0;

    std::string str() const { return file + ":" + std::to_string(line); }
};

struct Diagnostic {
    enum class Severity { error, warning };
    Severity severity = Severity::error;
    SourceRef where;
    std::string message;

    // "FILE:LINE:COL: message" (warnings say "warning: " after the position).
    std::string str() const;
};

enum class Role { mx, submission };
enum class TlsMode { off, optional, required, implicit };
enum class FilterMode { off, allow_listed, deny_listed };

struct ListenerConfig {
    std::string name;
    SockAddr address;
    std::string address_text;
    Role role = Role::mx;
    TlsMode tls = TlsMode::off;
    std::vector<Cidr> proxy_protocol;  // trusted load balancers; empty: off
    bool auth_without_tls = false;     // only honoured on loopback addresses
    bool sender_login_match = false;
    SourceRef where;
};

struct Transport {
    // mx: delivery by the recipient domain's MX records (daemon/dns/destination.hpp).
    enum class Kind { smtp, maildir, mx };
    Kind kind = Kind::maildir;
    std::string host;  // smtp: IP literal or name
    std::uint16_t port = 25;
    TlsMode starttls = TlsMode::optional;  // smtp: off | optional | required
    std::string path;                      // maildir: absolute directory
    bool inline_delivery = false;
    std::string text;  // as written, for logs
};

struct Route {
    std::string domain;  // lower-case, or "*"
    Transport transport;
    SourceRef where;
};

struct RelayConfig {
    bool enabled;
    bool authenticated;
    bool privileged_networks;
    bool local_senders;
    bool open;
    bool acknowledge_open_relay;
};

struct Config {
    std::string path;  // absolute path of the file this came from
    std::string dir;   // its directory: relative paths are resolved against it

    struct {
        std::string hostname;
        unsigned shards;
        std::uint32_t max_connections;
        std::uint32_t max_connections_per_ip;
        std::string nat_router;
        // Started as root, sluiced serves as this user and group (daemon/privileges.hpp).
        std::string user;
        std::string group;
        bool allow_root;
    } server;

    std::vector<ListenerConfig> listeners;

    struct {
        std::string certificate;
        std::string key;
        std::string ca_file;  // verifies next hops of starttls=required routes; "" none
    } tls;

    struct {
        std::uint64_t message_size;
        std::uint32_t recipients;
        Millis command_timeout;
        Millis data_timeout;
        Millis command_deadline;      // whole command line, however slowly it trickles
        std::uint64_t min_data_rate;  // bytes per second averaged over DATA
        std::uint32_t max_errors;
        std::uint32_t junk_commands;  // NOOP, RSET, HELP, VRFY, repeated EHLO/HELO per session
        std::uint32_t max_hops;
        Millis shutdown_grace;
        Millis greeting_delay;               // input before the greeting: early talker (554)
        Millis proxy_timeout;  // a proxy_protocol listener's wait for the whole PROXY header
        std::uint32_t outbound_connections;  // concurrent connections per next hop
        std::uint32_t outbound_connections_total;  // over all next hops and destinations
        std::uint64_t outbound_queue_memory;  // message data waiting in memory per next hop
    } limits;

    RelayConfig relay;

    struct {
        FilterMode filter;
    } connections;

    // Rate limits per client address and per network (daemon/rates/limits.hpp); 0: off.
    struct {
        Millis interval;
        std::uint32_t connections_per_client;
        std::uint32_t connections_per_network;
        std::uint32_t messages_per_client;
        std::uint32_t messages_per_network;
        std::uint32_t recipients_per_client;
        std::uint32_t recipients_per_network;
        std::uint32_t errors_per_client;
        std::uint32_t errors_per_network;
        bool tarpit;         // action "tarpit": hold the refusal for tarpit_delay
        Millis tarpit_delay;
        std::uint32_t table_size;  // keys remembered (fixed memory; read at start)
    } rates;

    struct {
        std::vector<std::string> local;  // lower-case, no trailing dot
    } domains;

    struct {
        std::string dir;
    } maps;

    std::vector<Route> routes;

    struct {
        std::string dir;
        std::vector<Millis> retry;
        Millis max_age;
        std::uint64_t max_size;         // 0: unlimited
        std::uint64_t min_free;         // free disk below this: new mail gets 452 4.3.1
        std::uint64_t reserve;          // held back for outcome records on a full disk
        std::uint32_t syncs_in_flight;  // group-commit batches in fdatasync at once
        Millis commit_delay;            // group commit: wait this long for expected company
    } spool;

    struct {
        std::string socket;
    } control;

    // The resolver of each shard (daemon/dns/resolver.hpp) and delivery by MX.
    struct {
        std::vector<std::string> servers;  // "IP", "IP:PORT", "[IPv6]:PORT"; empty: resolv.conf
        Millis timeout;
        std::uint32_t attempts;
        std::uint32_t cache_entries;  // per shard
        std::uint64_t cache_memory;   // per shard
        Millis min_ttl;
        Millis max_ttl;
        bool prefer_ipv4;
        std::uint32_t mx_addresses;  // addresses tried per delivery attempt
    } dns;

    struct {
        std::string address_text;
        std::optional<SockAddr> address;
    } stats;

    // Where each key was set ("relay.open" -> file:line), for `explain` and lint output.
    std::map<std::string, SourceRef> sources;

    // The route for a recipient domain: exact match, else "*", else nullptr.
    const Route* route_for(std::string_view domain) const;
    bool is_local_domain(std::string_view domain) const;
};

struct LoadResult {
    std::shared_ptr<const Config> config;  // null when there is any error
    std::vector<Diagnostic> diagnostics;   // errors and warnings, sorted by position

    bool ok() const { return config != nullptr; }
};

LoadResult load_config(const std::string& path);
LoadResult load_config_text(const std::string& text, const std::string& path);

// The schema as documentation: one line per key ("section.key  kind  default  doc").
std::string describe_schema();

std::string_view to_string(Role r);
std::string_view to_string(TlsMode m);

}  // namespace sluice
