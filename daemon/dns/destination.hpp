#pragma once
// Where mail for a domain goes, by DNS (RFC 5321 §5.1): the MX set ordered by preference
// (equal preferences shuffled, §5.1 "randomize"), the implicit MX when there is none, the
// null MX of RFC 7505, MX records that lead back to this host (a loop), CNAMEs followed
// with a bound, and the addresses of each host in the preferred family first.
//
// Pure: the lookups are a function given by the caller (daemon/dns/resolver.hpp on a
// shard's loop, a scripted fake in the unit tests); no libuv, no sockets here. The result
// is a plan for one delivery attempt: the addresses to try in order, or a verdict (bounce,
// defer) with the reply-table row that says why.

#include <cstdint>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "common/net.hpp"
#include "common/reply.hpp"
#include "daemon/dns/message.hpp"

namespace sluice {
struct Config;
}

namespace sluice::dns {

enum class Prefer : std::uint8_t { ipv6, ipv4 };

// What this host is, to recognise an MX that points back at it.
struct Self {
    std::vector<std::string> names;  // server.hostname (lower-case, no dot)
    std::vector<IpAddr> addrs;       // addresses of our listeners on the SMTP port
    bool any_v4 = false;             // a listener on 0.0.0.0 port 25: every local v4 address
    bool any_v6 = false;
};

// This host as the config describes it: server.hostname and the listeners on port 25.
Self self_of(const Config& cfg);

struct Target {
    std::string host;  // the MX host (the domain itself for an implicit MX)
    std::uint16_t preference = 0;
    IpAddr addr;
};

// One MX host as DNS described it (for `sluicectl dns` and the logs).
struct HostReport {
    std::string name;
    std::uint16_t preference = 0;
    std::string canonical;  // after CNAMEs
    std::vector<std::pair<IpAddr, std::uint32_t>> addrs;  // with their cached TTL (s)
    std::string status;     // "ok", "nodata", "nxdomain", "temporary", "self"...
};

struct Destination {
    enum class Verdict : std::uint8_t { deliver, bounce, defer };
    Verdict verdict = Verdict::defer;
    Reply reply = Reply::dns_temporary;  // bounce and defer: the row that says why
    std::string detail;                  // the % of that row, and the log's reason
    std::vector<Target> targets;         // deliver: in the order to try
    bool implicit = false;               // no MX: the domain's own addresses
    bool null_mx = false;
    std::uint32_t mx_ttl = 0;            // of the MX answer (or its negative answer)
    std::uint32_t ttl = 0;               // the plan is good this long (lowest TTL used)
    std::vector<HostReport> hosts;
};
std::string_view to_string(Destination::Verdict v);

// RFC 5321 §5.1: by preference, the equal ones in random order.
std::vector<Record> order_mx(std::vector<Record> mx, std::mt19937& rng);
// RFC 7505 §3: a single MX whose target is the root.
bool is_null_mx(const std::vector<Record>& mx);

using LookupDone = std::function<void(const Result&)>;
using LookupFn = std::function<void(const std::string& name, Type type, LookupDone done)>;

struct PlanOptions {
    Prefer prefer = Prefer::ipv6;
    std::size_t max_targets = 5;  // addresses tried per delivery attempt
    std::size_t max_hosts = 10;   // MX hosts whose addresses are looked up
};

// Resolves `domain` through `lookup` and calls `done` once with the plan (possibly before
// returning, when every answer is cached). CNAMEs are followed up to limits::cname_chain
// in all, by asking again for the target when a server did not include it.
void plan_destination(const std::string& domain, const Self& self, const PlanOptions& opts,
                      std::mt19937& rng, LookupFn lookup,
                      std::function<void(Destination)> done);

// Follows CNAMEs by asking again (bounded): the lookup a plan uses for each name.
void lookup_following(LookupFn lookup, const std::string& name, Type type, LookupDone done);

}  // namespace sluice::dns
