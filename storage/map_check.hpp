#pragma once
// The whole-installation check shared by `sluiced --check`, the daemon's start-up and
// `sluicectl check`: every published map must be readable (a corrupt map would make the
// daemon answer T140), and the config plus the maps that widen who may relay or connect
// are linted for open-relay risks (policy/lint.hpp).

#include <set>
#include <vector>

#include "common/config.hpp"
#include "policy/maps.hpp"
#include "storage/map_source.hpp"

namespace sluice::storage {

enum class UnreadableMap { error, warning };

// Diagnostics about the maps and the lint, without the config loader's own (the caller
// has those); duplicates of `already` are left out. An unreadable map is an error for
// `--check` and `sluicectl check`, but only a warning when the daemon starts: it then
// answers T140 for lookups that need that map (fail closed) instead of not serving at all.
// `unchanged` names maps whose files are the very ones that passed the last check (same
// inode, size and mtime: published maps are never modified in place): they are not read
// again, which keeps a reload fast with million-entry maps. The two maps the lint reads
// (privileged_networks, connection_filter) are always read.
std::vector<Diagnostic> check_maps(const Config& config,
                                   const std::vector<Diagnostic>& already = {},
                                   UnreadableMap unreadable = UnreadableMap::error,
                                   const std::set<policy::MapId>& unchanged = {});

// The maps that widen who may relay or connect: the open-relay lint reads them.
bool map_is_linted(policy::MapId map);

// The open-relay lint's errors about `entries` as the new contents of `map` (none for a
// map that is not linted). Every way a
// map changes goes through it: `map build` and `map add` refuse to publish such a map,
// and a running daemon refuses to switch to one (the old generation keeps serving),
// exactly as `--check`, a reload and the start-up refuse it.
std::vector<Diagnostic> lint_map_contents(const Config& config, policy::MapId map,
                                          const std::vector<MapEntry>& entries);

}  // namespace sluice::storage
