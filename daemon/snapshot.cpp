#include "daemon/snapshot.hpp"

#include <algorithm>

#include "daemon/tls.hpp"

namespace sluice {

std::shared_ptr<const Snapshot> make_snapshot(std::shared_ptr<const Config> config,
                                              std::uint64_t generation, std::string& error) {
    auto snap = std::make_shared<Snapshot>();
    snap->rules = policy::Rules::from_config(*config);
    snap->generation = generation;
    bool needs_tls = std::any_of(config->listeners.begin(), config->listeners.end(),
                                 [](const ListenerConfig& l) { return l.tls != TlsMode::off; });
    if (needs_tls) {
        std::string e;
        snap->tls = tls::TlsServerConfig::load(config->tls.certificate, config->tls.key, e);
        if (!snap->tls) {
            error = config->tls.certificate + ": " + e;
            return nullptr;
        }
    }
    snap->config = std::move(config);
    return snap;
}

}  // namespace sluice
