#include "policy/lint.hpp"

#include <algorithm>
#include <charconv>
#include <optional>
#include <string_view>
#include <tuple>

#include "common/net.hpp"

namespace sluice::policy {

namespace {

using Severity = Diagnostic::Severity;

SourceRef config_ref(const Config& c, const std::string& key) {
    auto it = c.sources.find(key);
    if (it != c.sources.end()) {
        return it->second;
    }
    return SourceRef{c.path, 0, 0};
}

// "FILE:LINE" -> {FILE, LINE, 1}; without a numeric suffix the whole text is the file.
SourceRef entry_ref(std::string_view source) {
    SourceRef ref;
    auto colon = source.rfind(':');
    if (colon != std::string_view::npos && colon + 1 < source.size()) {
        auto digits = source.substr(colon + 1);
        int line = 0;
        auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), line);
        if (ec == std::errc() && end == digits.data() + digits.size()) {
            ref.file = std::string(source.substr(0, colon));
            ref.line = line;
            ref.column = 1;
            return ref;
        }
    }
    ref.file = std::string(source);
    return ref;
}

std::string quoted(std::string_view s) {
    return "\"" + std::string(s) + "\"";
}

bool contains_all_v4(const Cidr& c) {
    // An IPv6 prefix no longer than /96 that holds ::ffff:0.0.0.0 holds every IPv4-mapped
    // address, i.e. every IPv4 client.
    static const IpAddr mapped_zero = [] {
        IpAddr a;
        a.bytes[10] = 0xff;
        a.bytes[11] = 0xff;
        a.v4 = true;
        return a;
    }();
    return !c.base.v4 && c.prefix <= 96 && c.contains(mapped_zero);
}

bool cidrs_overlap(const Cidr& a, const Cidr& b) {
    return a.contains(b.base) || b.contains(a.base);
}

struct Parsed {
    Cidr cidr;
    const LintEntry* entry;
};

class Linter {
  public:
    Linter(const Config& c, const LintMaps& m) : cfg_(c), maps_(m) {}

    std::vector<Diagnostic> run() {
        open_relay();
        local_senders();
        submission_listeners();
        privileged_networks();
        connection_filter();
        std::stable_sort(out_.begin(), out_.end(), [](const Diagnostic& a, const Diagnostic& b) {
            return std::tie(a.where.file, a.where.line, a.where.column) <
                   std::tie(b.where.file, b.where.line, b.where.column);
        });
        return std::move(out_);
    }

  private:
    void add(Severity s, SourceRef where, std::string message) {
        out_.push_back({s, std::move(where), std::move(message)});
    }

    bool relay_on() const { return cfg_.relay.enabled; }

    void open_relay() {
        if (!cfg_.relay.open) {
            return;
        }
        if (!cfg_.relay.acknowledge_open_relay) {
            add(Severity::error, config_ref(cfg_, "relay.open"),
                "relay.open = true makes this server an open relay and is not acknowledged "
                "(relay.acknowledge_open_relay)");
        } else if (relay_on()) {
            add(Severity::warning, config_ref(cfg_, "relay.open"),
                "relay.open = true (acknowledged): this server is an open relay (G110)");
        }
    }

    void local_senders() {
        if (!cfg_.relay.local_senders || !relay_on()) {
            return;
        }
        for (const auto& l : cfg_.listeners) {
            if (l.role == Role::mx) {
                add(Severity::warning, config_ref(cfg_, "relay.local_senders"),
                    "relay.local_senders = true with mx listener " + quoted(l.name) + " (" +
                        l.where.str() +
                        "): anyone on the internet can relay by forging a local sender address");
            }
        }
    }

    void submission_listeners() {
        for (const auto& l : cfg_.listeners) {
            if (l.role != Role::submission) {
                continue;
            }
            if (l.auth_without_tls) {
                add(Severity::warning, l.where,
                    "listener " + quoted(l.name) +
                        ": auth_without_tls = true offers AUTH without TLS (passwords in clear)");
            } else if (l.tls == TlsMode::off) {
                add(Severity::warning, l.where,
                    "listener " + quoted(l.name) +
                        ": submission with tls = \"off\": AUTH is only offered after TLS, so "
                        "it is never offered here");
            }
        }
    }

    std::vector<Parsed> parse(const std::vector<LintEntry>& entries, std::string_view map) {
        std::vector<Parsed> out;
        for (const auto& e : entries) {
            std::string err;
            auto c = parse_cidr(e.key, err);
            if (!c) {
                add(Severity::error, entry_ref(e.source),
                    std::string(map) + ": key " + quoted(e.key) + ": " + err);
                continue;
            }
            out.push_back({*c, &e});
        }
        return out;
    }

    void privileged_networks() {
        const bool used = relay_on() && cfg_.relay.privileged_networks;
        const Severity serious = used ? Severity::error : Severity::warning;
        const std::string unused =
            used ? "" : " (unused while relay.privileged_networks is off, dangerous once on)";
        auto nets = parse(maps_.privileged_networks, "privileged_networks");
        std::optional<IpAddr> nat;
        if (!cfg_.server.nat_router.empty()) {
            nat = parse_ip(cfg_.server.nat_router);
        }
        for (const auto& n : nets) {
            const std::string key = "privileged_networks: " + quoted(n.entry->key);
            const unsigned p = n.cidr.family_prefix();
            const SourceRef where = entry_ref(n.entry->source);
            bool flagged = true;  // one error per entry: the widest problem
            if (n.cidr.base.v4 ? p <= lint_limits::kV4Error : p <= lint_limits::kV6Error) {
                add(serious, where,
                    key + " is /" + std::to_string(p) + ", " +
                        (p == 0 ? "everybody" : "far wider than a LAN") + "; /" +
                        std::to_string(n.cidr.base.v4 ? lint_limits::kV4Error + 1
                                                      : lint_limits::kV6Error + 1) +
                        " is the widest accepted" + unused);
            } else if (contains_all_v4(n.cidr)) {
                add(serious, where, key + " contains every IPv4 address" + unused);
            } else {
                flagged = false;
                if (n.cidr.base.v4 ? p < lint_limits::kV4Warn : p < lint_limits::kV6Warn) {
                    add(Severity::warning, where,
                        key + " is /" + std::to_string(p) +
                            ": keep the LAN definition as tight as possible");
                }
            }
            if (!flagged && nat && n.cidr.contains(*nat)) {
                add(serious, where,
                    key + " contains server.nat_router " + cfg_.server.nat_router +
                        ": connections forwarded by the NAT router would be trusted" + unused);
            }
            for (const auto& l : cfg_.listeners) {
                for (const auto& b : l.proxy_protocol) {
                    // CIDRs are nested or disjoint. A balancer's own connections (v2 LOCAL
                    // health checks, v1 UNKNOWN, proxy-protocol.txt §2.1-2.2) run as its
                    // address: inside a privileged network they could relay.
                    if (!flagged && (n.cidr.contains(b.base) || b.contains(n.cidr.base))) {
                        add(Severity::warning, where,
                            key + " overlaps the load balancer " + format_cidr(b) +
                                " of listener " + quoted(l.name) +
                                " (proxy_protocol): its own connections, whose PROXY header "
                                "names no client, would be trusted to relay");
                    }
                }
            }
        }
        if (used && maps_.privileged_networks.empty() && !maps_.privileged_networks_unreadable) {
            add(Severity::warning, config_ref(cfg_, "relay.privileged_networks"),
                "relay.privileged_networks = true but map privileged_networks is empty" +
                    (maps_.privileged_networks_path.empty()
                         ? std::string()
                         : " (" + maps_.privileged_networks_path + ")"));
        }
    }

    void connection_filter() {
        auto entries = parse(maps_.connection_filter, "connection_filter");
        std::vector<Parsed> rules;
        for (const auto& e : entries) {
            if (e.entry->value != "allow" && e.entry->value != "deny") {
                add(Severity::error, entry_ref(e.entry->source),
                    "connection_filter: " + quoted(e.entry->key) + ": value " +
                        quoted(e.entry->value) + " is neither allow nor deny");
                continue;
            }
            rules.push_back(e);
        }
        // CIDR prefixes are nested or disjoint. Sorted by start, containers first, a stack
        // holds the chain of prefixes containing the current one: each overlap is found
        // once, in O(n * depth) rather than O(n^2).
        std::sort(rules.begin(), rules.end(), [](const Parsed& a, const Parsed& b) {
            return std::tie(a.cidr.base.bytes, a.cidr.prefix) <
                   std::tie(b.cidr.base.bytes, b.cidr.prefix);
        });
        std::vector<const Parsed*> chain;
        for (const auto& r : rules) {
            while (!chain.empty() && !cidrs_overlap(chain.back()->cidr, r.cidr)) {
                chain.pop_back();
            }
            for (const Parsed* outer : chain) {
                if (outer->entry->value != r.entry->value) {
                    add(Severity::warning, entry_ref(r.entry->source),
                        "connection_filter: " + quoted(r.entry->key) + " " + r.entry->value +
                            " overlaps " + quoted(outer->entry->key) + " " + outer->entry->value +
                            " (" + outer->entry->source + "): the longer prefix wins");
                }
            }
            chain.push_back(&r);
        }
        if (cfg_.connections.filter == FilterMode::allow_listed &&
            maps_.connection_filter.empty()) {
            add(Severity::warning, config_ref(cfg_, "connections.filter"),
                "connections.filter = \"allow-listed\" but map connection_filter is empty: "
                "every connection is refused (C130)");
        }
    }

    const Config& cfg_;
    const LintMaps& maps_;
    std::vector<Diagnostic> out_;
};

}  // namespace

std::vector<Diagnostic> lint(const Config& config, const LintMaps& maps) {
    return Linter(config, maps).run();
}

}  // namespace sluice::policy
