#include "storage/map_check.hpp"

#include <set>

#include "policy/lint.hpp"
#include "storage/maps.hpp"

namespace sluice::storage {

bool map_is_linted(MapId map) {
    return map == MapId::privileged_networks || map == MapId::connection_filter;
}

std::vector<Diagnostic> check_maps(const Config& cfg, const std::vector<Diagnostic>& already,
                                   UnreadableMap unreadable,
                                   const std::set<policy::MapId>& unchanged) {
    std::vector<Diagnostic> diags;
    policy::LintMaps lint_maps;
    for (std::size_t i = 0; i < static_cast<std::size_t>(MapId::count_); ++i) {
        auto id = static_cast<MapId>(i);
        if (!map_is_linted(id) && unchanged.count(id) != 0) {
            continue;
        }
        auto contents = read_map(cfg.maps.dir, id);
        std::string path = map_path(cfg.maps.dir, id);
        if (!contents.ok()) {
            diags.push_back(
                {unreadable == UnreadableMap::error ? Diagnostic::Severity::error
                                                    : Diagnostic::Severity::warning,
                 {path, 0, 0},
                 "map " + std::string(map_file_name(id)) +
                     " is unreadable (the daemon answers T140): " + contents.error().message});
            if (id == MapId::privileged_networks) {
                lint_maps.privileged_networks_unreadable = true;
            }
            continue;
        }
        std::vector<policy::LintEntry>* into = nullptr;
        if (id == MapId::privileged_networks) {
            into = &lint_maps.privileged_networks;
            lint_maps.privileged_networks_path = path;
        } else if (id == MapId::connection_filter) {
            into = &lint_maps.connection_filter;
            lint_maps.connection_filter_path = path;
        }
        if (into != nullptr) {
            for (const auto& e : contents->entries) {
                into->push_back({e.key, e.value, e.source});
            }
        }
    }
    // The loader already warns about some of what lint re-derives: report each line once.
    std::set<std::string> seen;
    for (const auto& d : already) {
        seen.insert(d.str());
    }
    for (auto& d : policy::lint(cfg, lint_maps)) {
        if (seen.insert(d.str()).second) {
            diags.push_back(std::move(d));
        }
    }
    return diags;
}

std::vector<Diagnostic> lint_map_contents(const Config& cfg, MapId map,
                                          const std::vector<MapEntry>& entries) {
    policy::LintMaps lint_maps;
    std::vector<policy::LintEntry>* into = nullptr;
    if (map == MapId::privileged_networks) {
        into = &lint_maps.privileged_networks;
        lint_maps.privileged_networks_path = map_path(cfg.maps.dir, map);
    } else if (map == MapId::connection_filter) {
        into = &lint_maps.connection_filter;
        lint_maps.connection_filter_path = map_path(cfg.maps.dir, map);
    } else {
        return {};
    }
    for (const auto& e : entries) {
        into->push_back({e.key, e.value, e.source});
    }
    // Only what the lint says about this map's entries: the config's own problems were
    // refused when it loaded, and the other map is not changing.
    const std::string prefix = std::string(map_file_name(map)) + ": ";
    std::vector<Diagnostic> errors;
    for (auto& d : policy::lint(cfg, lint_maps)) {
        if (d.severity == Diagnostic::Severity::error && d.message.rfind(prefix, 0) == 0) {
            errors.push_back(std::move(d));
        }
    }
    return errors;
}

}  // namespace sluice::storage
