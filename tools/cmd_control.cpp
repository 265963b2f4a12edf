// sluicectl reload | status | stats | explain | dns | rates: the commands that ask the running daemon
// (README.md), over its control socket (daemon/control.hpp, tools/control_client.hpp).
//
// Trust: run by the operator; arguments are validated here and again by the daemon.
// Exit codes (tools/ctl.hpp): 0 done; 1 the daemon refused or failed the operation (a
// reload with errors, an explain it cannot run); 2 usage, or the daemon cannot be reached
// ("sluicectl: cannot connect to PATH: ...", also when it refuses our uid).
// Human output by default; --json prints the daemon's reply as JSON.

#include <cmath>
#include <cstdio>
#include <iostream>
#include <string>

#include "common/net.hpp"
#include "storage/spool.hpp"  // kSpoolStates: what each state means
#include "tools/control_client.hpp"
#include "tools/ctl.hpp"

namespace sluice::ctl {
namespace {

using nlohmann::json;
using namespace std::chrono_literals;

constexpr const char* kReloadHelp =
    "usage: sluicectl [--config FILE] [--json] reload [--socket PATH]\n"
    "\n"
    "Asks sluiced to re-read its config file and maps, validate everything (the checks of\n"
    "'sluiced --check'), and switch every shard to the new generation; sessions in progress\n"
    "finish with the rules they started with. Listeners whose address is unchanged keep\n"
    "their sockets; added ones are opened, removed ones closed. Applied entirely or not at\n"
    "all: on any error nothing changes and every error is printed as FILE:LINE:COL.\n"
    "server.shards, maps.dir, spool.dir and control.socket need a restart.\n"
    "Prints what changed (keys, maps, listeners). Exit 1 when the reload was refused.\n";

constexpr const char* kStatusHelp =
    "usage: sluicectl [--config FILE] [--json] status [--socket PATH]\n"
    "\n"
    "Version, uptime, shards, config generation (and each shard's), listeners, active\n"
    "sessions, queue size and config path of the running sluiced.\n";

constexpr const char* kStatsHelp =
    "usage: sluicectl [--config FILE] [--json] stats [--socket PATH]\n"
    "\n"
    "The daemon's counters: the same numbers as GET /metrics on the stats address\n"
    "(connections by listener and result, decisions by code, messages, bytes, deliveries,\n"
    "TLS, AUTH, reloads, session durations), one 'name value' a line, or JSON.\n";

constexpr const char* kDnsHelp =
    "usage: sluicectl [--config FILE] [--json] dns DOMAIN [--socket PATH]\n"
    "\n"
    "Asks the running sluiced what delivery by MX would do for DOMAIN now, through the\n"
    "resolver and cache of its first shard: the MX hosts by preference with their status\n"
    "and addresses (with the TTL left in the cache), the addresses a delivery would try in\n"
    "order, or the verdict (null MX, NXDOMAIN, a loop back to this host, a DNS failure)\n"
    "and the reply it gives. Exit 1 when the daemon cannot answer.\n";

constexpr const char* kRatesHelp =
    "usage: sluicectl [--config FILE] [--json] rates [CLIENT] [--socket PATH]\n"
    "\n"
    "The [rates] limits of the running sluiced and how full its counter table is; with\n"
    "CLIENT (an IP address), each limit under the client's address and network keys: the\n"
    "events counted now (GCRA level), the limit per interval, and whether one more would\n"
    "be refused (and for how long). Reading counts nothing.\n";

constexpr const char* kExplainHelp =
    "usage: sluicectl [--config FILE] [--json] explain --client IP --from ADDR --to ADDR\n"
    "                 [--auth USER] [--helo NAME] [--listener NAME] [--tls] [--socket PATH]\n"
    "\n"
    "Runs the live policy of the running sluiced (its current config generation and maps)\n"
    "on one envelope, without sending mail, and prints the decision, its code, the reply a\n"
    "client would get, the rule that decided and its source FILE:LINE.\n"
    "  --client IP      the connecting address\n"
    "  --from ADDR      the sender ('' or '<>' for the null sender)\n"
    "  --to ADDR        the recipient\n"
    "  --auth USER      as if the client had authenticated as USER\n"
    "  --helo NAME      the HELO/EHLO name\n"
    "  --listener NAME  the listener the client came in on (default: the first); on one\n"
    "                   with proxy_protocol, --client is the address the PROXY header names\n"
    "  --tls            as if the client had used TLS (default: when the listener requires it)\n";

struct Common {
    std::string socket;  // --socket
    Args rest;
};

// Takes --socket PATH out of `args`.
bool common_args(const Args& args, Common& c, std::string& error) {
    for (std::size_t i = 0; i < args.size(); ++i) {
        if (args[i] == "--socket") {
            if (i + 1 >= args.size()) {
                error = "--socket needs a PATH";
                return false;
            }
            c.socket = args[++i];
        } else {
            c.rest.push_back(args[i]);
        }
    }
    return true;
}

// Connects and asks; prints the one-line error and returns its exit code on failure.
std::optional<json> ask(const Options& opts, const Common& c, const json& request,
                        std::chrono::milliseconds timeout, int& code) {
    std::string error;
    std::string path = c.socket;
    if (path.empty()) {
        auto p = control_socket_path(opts.config_path, error);
        if (!p) {
            code = fail(error);
            return std::nullopt;
        }
        path = *p;
    }
    auto client = ControlClient::connect(path, error);
    if (!client) {
        code = fail(error);
        return std::nullopt;
    }
    auto reply = client->call(request, timeout, error);
    if (!reply) {
        code = fail(error);
        return std::nullopt;
    }
    if (reply->value("denied", false)) {
        code = fail("cannot connect to " + path + ": " +
                    reply->value("error", std::string("refused")));
        return std::nullopt;
    }
    return reply;
}

void print_json(const json& j) {
    std::cout << j.dump(2, ' ', false, json::error_handler_t::replace) << "\n";
}

std::string list_of(const json& names) {
    std::string out;
    for (const auto& n : names) {
        out += (out.empty() ? "" : ", ") + n.get<std::string>();
    }
    return out;
}

std::string duration_text(double seconds) {
    auto total = static_cast<long long>(seconds);
    long long d = total / 86400, h = total / 3600 % 24, m = total / 60 % 60, s = total % 60;
    char buf[64];
    if (d > 0) {
        std::snprintf(buf, sizeof buf, "%lldd %02lldh %02lldm %02llds", d, h, m, s);
    } else if (h > 0) {
        std::snprintf(buf, sizeof buf, "%lldh %02lldm %02llds", h, m, s);
    } else {
        std::snprintf(buf, sizeof buf, "%lldm %02llds", m, s);
    }
    return buf;
}

std::string ms_text(const json& v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.1f ms", v.is_number() ? v.get<double>() : 0.0);
    return buf;
}

// "a.b.c value" for every leaf, in key order.
void flatten(const json& j, const std::string& prefix,
             std::vector<std::pair<std::string, std::string>>& out) {
    if (j.is_object()) {
        for (auto it = j.begin(); it != j.end(); ++it) {
            flatten(it.value(), prefix.empty() ? it.key() : prefix + "." + it.key(), out);
        }
    } else if (j.is_array()) {
        std::string v;
        for (const auto& e : j) {
            v += (v.empty() ? "" : " ") + e.dump();
        }
        out.emplace_back(prefix, v);
    } else if (j.is_string()) {
        out.emplace_back(prefix, j.get<std::string>());
    } else {
        out.emplace_back(prefix, j.dump());
    }
}

}  // namespace

int cmd_reload(const Args& args, const Options& opts) {
    if (wants_help(args)) {
        std::cout << kReloadHelp;
        return kOk;
    }
    Common c;
    std::string error;
    if (!common_args(args, c, error) || !c.rest.empty()) {
        return fail(error.empty() ? "reload: unexpected argument \"" + c.rest[0] + "\"" : error);
    }
    int code = kOk;
    // Validating 1M-entry maps takes seconds, not minutes.
    auto reply = ask(opts, c, json{{"cmd", "reload"}}, 300s, code);
    if (!reply) {
        return code;
    }
    bool ok = reply->value("ok", false);
    if (opts.json) {
        print_json(*reply);
        return ok ? kOk : kProblem;
    }
    for (const auto& e : reply->value("errors", json::array())) {
        std::cout << e.get<std::string>() << "\n";
    }
    for (const auto& w : reply->value("warnings", json::array())) {
        std::cout << w.get<std::string>() << "\n";
    }
    if (!ok) {
        return fail("reload refused: " + reply->value("error", std::string("unknown error")),
                    kProblem);
    }
    const json& ch = (*reply)["changed"];
    std::cout << "reloaded: generation " << (*reply)["generation"].get<std::uint64_t>()
              << " (validated in " << ms_text((*reply)["validate_ms"])
              << ", every shard switched in " << ms_text((*reply)["apply_ms"]) << ")\n";
    bool any = false;
    const std::pair<const char*, const char*> rows[] = {
        {"keys", "keys changed"},
        {"maps", "maps changed"},
        {"listeners_added", "listeners added"},
        {"listeners_removed", "listeners removed"},
        {"listeners_changed", "listeners changed"},
    };
    for (const auto& [key, label] : rows) {
        if (ch.contains(key) && !ch[key].empty()) {
            std::cout << "  " << label << ": " << list_of(ch[key]) << "\n";
            any = true;
        }
    }
    if (!any) {
        std::cout << "  nothing changed\n";
    }
    return kOk;
}

int cmd_status(const Args& args, const Options& opts) {
    if (wants_help(args)) {
        std::cout << kStatusHelp;
        return kOk;
    }
    Common c;
    std::string error;
    if (!common_args(args, c, error) || !c.rest.empty()) {
        return fail(error.empty() ? "status: unexpected argument \"" + c.rest[0] + "\"" : error);
    }
    int code = kOk;
    auto reply = ask(opts, c, json{{"cmd", "status"}}, 30s, code);
    if (!reply) {
        return code;
    }
    if (!reply->value("ok", false)) {
        return fail(reply->value("error", std::string("status failed")), kProblem);
    }
    if (opts.json) {
        print_json(*reply);
        return kOk;
    }
    const json& r = *reply;
    std::cout << "sluiced " << r.value("version", std::string("?")) << ", up "
              << duration_text(r.value("uptime_seconds", 0.0))
              << (r.value("draining", false) ? ", DRAINING" : "") << "\n";
    std::cout << "config:      " << r.value("config", std::string()) << "\n";
    std::cout << "generation:  " << r.value("generation", 0) << " (per shard: " << list_of([&] {
        json names = json::array();
        for (const auto& g : r.value("shard_generations", json::array())) {
            names.push_back(std::to_string(g.get<std::uint64_t>()));
        }
        return names;
    }()) << ")"
              << (r.value("reload_in_progress", false) ? ", reload in progress" : "") << "\n";
    std::cout << "shards:      " << r.value("shards", 0) << "\n";
    std::cout << "sessions:    " << r.value("sessions_active", 0) << " active\n";
    std::cout << "queue:       " << r.value("queue_messages", 0) << " messages\n";
    if (r.contains("spool") && r["spool"].is_object()) {
        const json& sp = r["spool"];
        std::string state = sp.value("state", std::string("?"));
        std::string what;
        for (const auto& row : storage::kSpoolStates) {
            what = state == row.name ? row.meaning : what;
        }
        std::cout << "spool:       " << state << " (" << what << "), "
                  << sp.value("free_bytes", std::uint64_t{0}) / (1024 * 1024) << " MiB free, reserve "
                  << sp.value("reserve_bytes", std::uint64_t{0}) / 1024 << " KiB\n";
    }
    std::string stats = r.value("stats_address", std::string());
    std::cout << "stats:       " << (stats.empty() ? "off" : "http://" + stats + "/metrics")
              << "\n";
    std::cout << "listeners:\n";
    for (const auto& l : r.value("listeners", json::array())) {
        char line[256];
        std::snprintf(line, sizeof line, "  %-14s %-24s role=%-11s tls=%s\n",
                      l.value("name", "").c_str(), l.value("address", "").c_str(),
                      l.value("role", "").c_str(), l.value("tls", "").c_str());
        std::cout << line;
    }
    return kOk;
}

int cmd_stats(const Args& args, const Options& opts) {
    if (wants_help(args)) {
        std::cout << kStatsHelp;
        return kOk;
    }
    Common c;
    std::string error;
    if (!common_args(args, c, error) || !c.rest.empty()) {
        return fail(error.empty() ? "stats: unexpected argument \"" + c.rest[0] + "\"" : error);
    }
    int code = kOk;
    auto reply = ask(opts, c, json{{"cmd", "stats"}}, 30s, code);
    if (!reply) {
        return code;
    }
    if (!reply->value("ok", false) || !reply->contains("stats")) {
        return fail(reply->value("error", std::string("stats failed")), kProblem);
    }
    if (opts.json) {
        print_json((*reply)["stats"]);
        return kOk;
    }
    std::vector<std::pair<std::string, std::string>> rows;
    flatten((*reply)["stats"], "", rows);
    std::size_t width = 0;
    for (const auto& [k, v] : rows) {
        width = std::max(width, k.size());
    }
    for (const auto& [k, v] : rows) {
        std::cout << k << std::string(width + 2 - k.size(), ' ') << v << "\n";
    }
    return kOk;
}

int cmd_dns(const Args& args, const Options& opts) {
    if (wants_help(args)) {
        std::cout << kDnsHelp;
        return kOk;
    }
    Common c;
    std::string error;
    if (!common_args(args, c, error)) {
        return fail(error);
    }
    if (c.rest.size() != 1 || c.rest[0].empty() || c.rest[0][0] == '-') {
        return fail("dns needs one DOMAIN (see sluicectl dns --help)");
    }
    int code = kOk;
    auto reply = ask(opts, c, json{{"cmd", "dns"}, {"domain", c.rest[0]}}, 60s, code);
    if (!reply) {
        return code;
    }
    if (!reply->value("ok", false)) {
        return fail("dns: " + reply->value("error", std::string("failed")), kProblem);
    }
    if (opts.json) {
        print_json(*reply);
        return kOk;
    }
    const json& r = *reply;
    std::cout << "domain:   " << r.value("domain", "") << "\n";
    std::cout << "route:    " << (r.value("route", "").empty() ? "-" : r.value("route", ""))
              << "\n";
    std::cout << "verdict:  " << r.value("verdict", "");
    if (r.contains("reply")) {
        std::cout << " (" << r.value("reply", "") << ")";
    }
    std::cout << "\n";
    std::cout << "mx:       "
              << (r.value("null_mx", false)       ? "null MX (RFC 7505)"
                  : r.value("implicit_mx", false) ? "none: the domain's own addresses"
                                                  : "")
              << (r.value("null_mx", false) || r.value("implicit_mx", false) ? "" : "listed")
              << ", ttl " << r.value("mx_ttl", 0) << "s\n";
    for (const auto& h : r.value("hosts", json::array())) {
        std::cout << "  " << h.value("preference", 0) << " " << h.value("host", "") << " "
                  << h.value("status", "");
        if (!h.value("canonical", "").empty() && h.value("canonical", "") != h.value("host", "")) {
            std::cout << " (CNAME " << h.value("canonical", "") << ")";
        }
        std::cout << "\n";
        for (const auto& a : h.value("addresses", json::array())) {
            std::cout << "      " << a.value("address", "") << "  ttl " << a.value("ttl", 0)
                      << "s\n";
        }
    }
    for (const auto& t : r.value("try", json::array())) {
        std::cout << "try:      " << t.get<std::string>() << "\n";
    }
    return kOk;
}

int cmd_rates(const Args& args, const Options& opts) {
    if (wants_help(args)) {
        std::cout << kRatesHelp;
        return kOk;
    }
    Common c;
    std::string error;
    if (!common_args(args, c, error)) {
        return fail(error);
    }
    if (c.rest.size() > 1) {
        return fail("rates: unexpected argument \"" + c.rest[1] +
                    "\" (see sluicectl rates --help)");
    }
    json request{{"cmd", "rates"}};
    if (!c.rest.empty()) {
        if (!parse_ip(c.rest[0])) {
            return fail("rates: \"" + c.rest[0] + "\" is not an IP address");
        }
        request["client"] = c.rest[0];
    }
    int code = kOk;
    auto reply = ask(opts, c, request, 30s, code);
    if (!reply) {
        return code;
    }
    if (!reply->value("ok", false)) {
        return fail("rates: " + reply->value("error", std::string("failed")), kProblem);
    }
    if (opts.json) {
        print_json(*reply);
        return kOk;
    }
    const json& r = *reply;
    const json& t = r["table"];
    std::cout << "interval:  " << r.value("interval_ms", 0) << " ms, action "
              << r.value("action", std::string()) << "\n";
    std::cout << "table:     " << t.value("live", 0) << " live keys of " << t.value("capacity", 0)
              << ", " << t.value("evictions_live", 0) << " forgotten before they decayed\n";
    if (r.contains("client")) {
        std::cout << "client:    " << r.value("client", std::string())
                  << (r.value("exempt", false)
                          ? " (exempt: " + r.value("exempt_by", std::string()) + ")"
                          : "")
                  << "\n";
    }
    for (const auto& l : r["limits"]) {
        const auto limit = l.value("count", 0u);
        std::cout << "  " << l.value("limit", std::string()) << "/"
                  << l.value("key_kind", std::string());
        if (l.contains("key")) {
            std::cout << " " << l.value("key", std::string()) << " " << l.value("level", 0u) << "/"
                      << (limit == 0 ? std::string("off") : std::to_string(limit));
            if (l.value("over", false)) {
                std::cout << " OVER, retry in " << l.value("retry_after_ms", 0) << " ms";
            }
        } else {
            std::cout << " "
                      << (limit == 0 ? std::string("off")
                                     : std::to_string(limit) + " per interval");
        }
        std::cout << "\n";
    }
    return kOk;
}

int cmd_explain(const Args& args, const Options& opts) {
    if (wants_help(args)) {
        std::cout << kExplainHelp;
        return kOk;
    }
    Common c;
    std::string error;
    if (!common_args(args, c, error)) {
        return fail(error);
    }
    json request{{"cmd", "explain"}};
    const char* with_value[] = {"client", "from", "to", "auth", "helo", "listener"};
    for (std::size_t i = 0; i < c.rest.size(); ++i) {
        const std::string& a = c.rest[i];
        if (a == "--tls") {
            request["tls"] = true;
            continue;
        }
        bool known = false;
        for (const char* name : with_value) {
            if (a == std::string("--") + name) {
                if (i + 1 >= c.rest.size()) {
                    return fail(a + " needs a value (see sluicectl explain --help)");
                }
                request[name] = c.rest[++i];
                known = true;
            }
        }
        if (!known) {
            return fail("explain: unexpected argument \"" + a +
                        "\" (see sluicectl explain --help)");
        }
    }
    for (const char* required : {"client", "from", "to"}) {
        if (!request.contains(required)) {
            return fail(std::string("explain needs --") + required +
                        " (see sluicectl explain --help)");
        }
    }
    if (request["from"] == "") {
        request["from"] = "<>";
    }
    int code = kOk;
    auto reply = ask(opts, c, request, 30s, code);
    if (!reply) {
        return code;
    }
    if (!reply->value("ok", false)) {
        return fail("explain: " + reply->value("error", std::string("failed")), kProblem);
    }
    if (opts.json) {
        print_json(*reply);
        return kOk;
    }
    const json& r = *reply;
    auto s = [&r](const char* k) { return r.value(k, std::string()); };
    std::cout << "decision:   " << s("code") << " " << s("verdict") << "\n";
    std::cout << "reply:      " << s("reply") << "\n";
    std::cout << "rule:       " << (s("rule").empty() ? "-" : s("rule")) << "\n";
    std::cout << "source:     " << (s("source").empty() ? "-" : s("source")) << "\n";
    std::cout << "reason:     " << (s("reason").empty() ? "-" : s("reason")) << "\n";
    if (r.contains("deliver_to")) {
        std::cout << "deliver to: " << s("deliver_to") << "\n";
    }
    std::cout << "envelope:   client " << s("client") << " on " << s("listener") << " ("
              << s("role") << (r.value("tls", false) ? ", tls" : "")
              << (s("auth").empty() ? "" : ", auth " + s("auth")) << "), from " << s("from")
              << " to " << s("to") << ", generation " << r.value("generation", 0) << "\n";
    if (r.contains("proxy_protocol")) {
        std::string balancers;
        for (const auto& c : r["proxy_protocol"]) {
            balancers += (balancers.empty() ? "" : ", ") + c.get<std::string>();
        }
        std::cout << "proxy:      " << s("listener")
                  << " takes the client from the PROXY header of " << balancers << "\n";
    }
    return kOk;
}

}  // namespace sluice::ctl
