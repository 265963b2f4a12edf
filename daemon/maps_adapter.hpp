#pragma once
// Wires storage's LMDB map reader into a shard and the start-up check: one reader per
// shard (no locks on the data path), refreshed from the shard's tick timer.

#include <memory>
#include <vector>

#include "common/config.hpp"
#include "daemon/shard.hpp"

namespace sluice {

std::unique_ptr<ShardMaps> make_shard_maps(const Config& config, int shard);

// Validates every map file under maps.dir and lints config + maps for open-relay risks
// (the checks of `sluiced --check` and `sluicectl check`).
std::vector<Diagnostic> check_maps(const Config& config, const std::vector<Diagnostic>& already,
                                   bool starting);

}  // namespace sluice
