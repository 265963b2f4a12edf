#pragma once
// Building a configuration generation: the validated config, the policy rules derived
// from it, and the TLS certificate it names, all immutable once built. Shards swap to a
// new snapshot at a safe point; sessions keep the one they started with.

#include <memory>
#include <string>

#include "daemon/session.hpp"

namespace sluice {

// Builds generation `generation` from `config`. The certificate is loaded (and checked:
// key matches certificate, chain parses) only when a listener uses TLS; when it fails,
// `error` says why and the result is null, so the caller keeps the previous generation
// (a bad certificate file never takes the old one out of service).
std::shared_ptr<const Snapshot> make_snapshot(std::shared_ptr<const Config> config,
                                              std::uint64_t generation, std::string& error);

}  // namespace sluice
