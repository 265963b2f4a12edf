// sluicectl check: lints the config and the maps for open-relay risks (docs/maps.md).
//
// Loads the config (its own errors and warnings come first), then storage::check_maps:
// every map in maps.dir must be readable, and the entries of the maps that decide who may
// relay or connect (privileged_networks, connection_filter) go through policy::lint.
// Prints every diagnostic as `FILE:LINE:COL: message`, or a JSON array with --json.
//
// Trust: offline, read-only: opens the published map files the way the daemon does
// (validated before use) and never writes anything.
// Exit codes: 0 no errors (warnings alone are fine); 1 any error, in the config or the
// maps; 2 the config file cannot be read or a usage error.

#include <algorithm>
#include <cstdio>
#include <iostream>
#include <string>

#include "common/config.hpp"
#include "common/json.hpp"
#include "storage/map_check.hpp"
#include "tools/ctl.hpp"

namespace sluice::ctl {

namespace {

std::string json_string(std::string_view s) {
    std::string out;
    append_json_string(out, s);
    return out;
}

constexpr const char* kHelp =
    "usage: sluicectl [--config FILE] [--json] check\n"
    "\n"
    "Checks that every map in maps.dir is readable, and lints the config and the maps\n"
    "privileged_networks and connection_filter for open-relay risks: open relay without\n"
    "acknowledgement, privileged networks of /8 or wider (IPv6 /32), a privileged network\n"
    "holding server.nat_router, local_senders with an mx listener, AUTH without TLS,\n"
    "overlapping allow/deny filter entries, empty maps that are in use. Prints\n"
    "FILE:LINE:COL: message for each; exits 1 if any is an error.\n";

std::string diagnostic_json(const Diagnostic& d) {
    return "{\"file\":" + json_string(d.where.file) + ",\"line\":" + std::to_string(d.where.line) +
           ",\"column\":" + std::to_string(d.where.column) + ",\"severity\":\"" +
           (d.severity == Diagnostic::Severity::error ? "error" : "warning") +
           "\",\"message\":" + json_string(d.message) + "}";
}

int report(const std::vector<Diagnostic>& diags, const Options& opts) {
    bool errors = std::any_of(diags.begin(), diags.end(), [](const Diagnostic& d) {
        return d.severity == Diagnostic::Severity::error;
    });
    if (opts.json) {
        std::string out = "[";
        for (std::size_t i = 0; i < diags.size(); ++i) {
            out += (i ? ",\n " : "") + diagnostic_json(diags[i]);
        }
        std::cout << out << "]\n";
    } else {
        for (const auto& d : diags) {
            std::cout << d.str() << "\n";
        }
    }
    return errors ? kProblem : kOk;
}

}  // namespace

int cmd_check(const Args& args, const Options& opts) {
    if (wants_help(args)) {
        std::cout << kHelp;
        return kOk;
    }
    if (!args.empty()) {
        return fail("check: unexpected argument \"" + args[0] + "\" (see: sluicectl check --help)");
    }
    LoadResult loaded = load_config(opts.config_path);
    std::vector<Diagnostic> diags = loaded.diagnostics;
    if (!loaded.ok()) {
        bool unreadable = diags.size() == 1 && diags[0].where.line == 0;
        int rc = report(diags, opts);
        return unreadable ? kUsage : rc;
    }
    // Every map must be readable (else the daemon answers T140), and the maps that widen
    // who may relay or connect are linted with the config (storage/map_check.hpp).
    for (auto& d : storage::check_maps(*loaded.config, diags)) {
        diags.push_back(std::move(d));
    }
    return report(diags, opts);
}

}  // namespace sluice::ctl
