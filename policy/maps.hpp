#pragma once
// The policy's view of the operator's maps (docs/maps.md). The policy never opens a
// file: it asks this interface, and `storage/` implements it over LMDB. A lookup either
// finds a value, finds nothing, or fails; a failure must turn into a temporary-failure
// decision (T140), never into an accept.

#include <cstdint>
#include <string>
#include <string_view>

#include "common/net.hpp"

namespace sluice::policy {

enum class MapId : std::uint8_t {
    local_domains,
    local_addresses,
    catch_all,
    privileged_networks,
    connection_filter,
    access,
    users,
    rate_exempt,  // CIDR: clients the [rates] limits do not count (daemon/rates/limits.hpp)
    count_
};

std::string_view map_name(MapId id);

struct Lookup {
    enum class Status : std::uint8_t { found, missing, unavailable };
    Status status = Status::missing;
    std::string value;   // the entry's value (may be empty)
    std::string key;     // the key that matched (for CIDR maps: the prefix, e.g. "10.0.0.0/8")
    std::string source;  // "FILE:LINE" of the entry in the map's text source, if known

    bool found() const { return status == Status::found; }
    bool unavailable() const { return status == Status::unavailable; }
};

class Maps {
  public:
    virtual ~Maps() = default;
    // Exact match on a normalised key (domains lower-case, no trailing dot).
    virtual Lookup find(MapId map, std::string_view key) const = 0;
    // Longest-prefix match in a CIDR map (privileged_networks, connection_filter) or in
    // the client-address entries of `access`.
    virtual Lookup find_cidr(MapId map, const IpAddr& ip) const = 0;
    // Whether `map` holds any entry: found, missing (empty or absent), or unavailable.
    // The policy uses it on local_addresses to tell "no address list" (every address at
    // a local domain is known) from "not on the list" (L103). The default, `found`, is
    // the strict reading for an implementation that cannot tell.
    virtual Lookup::Status has_entries(MapId map) const {
        (void)map;
        return Lookup::Status::found;
    }
};

}  // namespace sluice::policy
