#pragma once
// Open-relay lint (docs/maps.md): what `sluicectl check` and `sluiced --check` report about
// a loaded config and the entries of the maps that widen who may relay or connect.
//
// A pure function over values: it reads no file and opens no map (the caller lists the
// entries from storage and passes them in), so it runs the same offline and in the daemon.
// Trust: the config was validated by the loader; map entries come from published maps but
// are still parsed defensively (an unparsable key is itself a diagnostic).
//
// Every diagnostic names the key and where it was written (FILE:LINE of the config key or
// map entry). Checks and severities:
//   error    relay.open without relay.acknowledge_open_relay (the loader refuses it too)
//   warning  relay.open acknowledged (G110: everyone may relay)
//   error    a privileged network of IPv4 /8 or wider, IPv6 /32 or wider, or an IPv6
//            prefix holding all of IPv4-mapped space (::/0, ::/80...). /32 is the usual
//            allocation to a whole ISP (RFC 6177 gives end sites /48 to /64): a prefix that
//            wide is never "the LAN".
//   warning  a privileged network wider than IPv4 /16 or IPv6 /48 (tighten it)
//   error    a privileged network containing server.nat_router (every connection the NAT
//            router forwards from the internet would come from a trusted address)
//   warning  a privileged network overlapping a listener's proxy_protocol balancers (their
//            own connections, health checks or PROXY UNKNOWN, run as the balancer)
//   (the three above are warnings while relay.privileged_networks is off or relaying is
//    disabled: the map is then unused, but would open the relay the day it is turned on)
//   warning  relay.privileged_networks on but the map is empty
//   warning  relay.local_senders on while an mx listener exists (anyone can forge a
//            local sender address from the internet)
//   warning  a submission listener with tls = "off" (AUTH is only offered after TLS, so it
//            is never offered there) or with auth_without_tls (passwords in clear)
//   warning  connection_filter entries where one contains the other with opposite
//            actions (allow vs deny), naming both lines
//   warning  connections.filter = "allow-listed" with an empty connection_filter map
//            (every connection is refused)
//   error    a map entry whose key is not a CIDR or a connection_filter value that is
//            neither allow nor deny

#include <string>
#include <vector>

#include "common/config.hpp"

namespace sluice::policy {

struct LintEntry {
    std::string key;  // as listed by storage: a canonical CIDR
    std::string value;
    std::string source;  // "FILE:LINE" of the entry in its map source
};

struct LintMaps {
    std::vector<LintEntry> privileged_networks;
    std::vector<LintEntry> connection_filter;
    // Where the maps live, for diagnostics about a map as a whole (e.g. "is empty").
    std::string privileged_networks_path;
    std::string connection_filter_path;
    // The map could not be read (reported on its own): not also "empty".
    bool privileged_networks_unreadable = false;
};

namespace lint_limits {
// Privileged networks this wide or wider are errors; wider than the second pair, warnings.
inline constexpr unsigned kV4Error = 8;
inline constexpr unsigned kV6Error = 32;
inline constexpr unsigned kV4Warn = 16;
inline constexpr unsigned kV6Warn = 48;
}  // namespace lint_limits

// Diagnostics sorted by file, line; errors and warnings mixed.
std::vector<Diagnostic> lint(const Config& config, const LintMaps& maps);

}  // namespace sluice::policy
