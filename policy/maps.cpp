#include "policy/maps.hpp"

namespace sluice::policy {

// The names of the maps (docs/maps.md): what `sluicectl map` takes and what logs and
// decisions print.
std::string_view map_name(MapId id) {
    switch (id) {
        case MapId::local_domains:
            return "local_domains";
        case MapId::local_addresses:
            return "local_addresses";
        case MapId::catch_all:
            return "catch_all";
        case MapId::privileged_networks:
            return "privileged_networks";
        case MapId::connection_filter:
            return "connection_filter";
        case MapId::access:
            return "access";
        case MapId::users:
            return "users";
        case MapId::rate_exempt:
            return "rate_exempt";
        case MapId::count_:
            break;
    }
    return "unknown";
}

}  // namespace sluice::policy
