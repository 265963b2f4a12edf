#pragma once
// The whole-installation check shared by `sluiced --check`, the daemon's start-up and
// `sluicectl check`: every published map must be readable (a corrupt map would make the
// daemon answer T140), and the config plus the maps that widen who may relay or connect
// are linted for open-relay risks (policy/lint.hpp).

#include <vector>

#include "common/config.hpp"

namespace sluice::storage {

// Diagnostics about the maps and the lint, without the config loader's own (the caller
// has those); duplicates of `already` are left out.
std::vector<Diagnostic> check_maps(const Config& config,
                                   const std::vector<Diagnostic>& already = {});

}  // namespace sluice::storage
