// sluiced: the Sluice SMTP gateway daemon (README.md, docs/architecture.md).
//
//   sluiced [--config FILE] [--check] [--log-level debug|info|warn|error]
//
// Runs in the foreground and logs to stderr. `--check` validates the config and maps,
// prints every problem as FILE:LINE:COL: message, and exits 1 on errors.

#include <cstdlib>
#include <cstring>
#include <iostream>
#include <string>

#include "common/config.hpp"
#include "common/log.hpp"
#include "daemon/maps_adapter.hpp"
#include "daemon/server.hpp"

namespace {

void usage(std::ostream& out) {
    out << "usage: sluiced [--config FILE] [--check] [--log-level LEVEL] [--version] [--schema]\n"
           "  --config FILE      TOML config (default /etc/sluice/sluice.toml)\n"
           "  --check            validate config and maps, print problems, exit 1 on errors\n"
           "  --log-level LEVEL  debug | info | warn | error (default info)\n"
           "  --schema           print every config key with its type, default and meaning\n"
           "  --version          print the version\n"
           "  --test-stall-on-sigusr2 SECONDS\n"
           "                     test only: SIGUSR2 blocks shard 0's loop for SECONDS (the\n"
           "                     watchdog test); never for production\n";
}

}  // namespace

int main(int argc, char** argv) {
    using namespace sluice;
    std::string config_path = "/etc/sluice/sluice.toml";
    bool check = false;
    int test_stall_seconds = 0;
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        if (a == "--config" && i + 1 < argc) {
            config_path = argv[++i];
        } else if (a == "--test-stall-on-sigusr2" && i + 1 < argc) {
            test_stall_seconds = std::atoi(argv[++i]);
            if (test_stall_seconds <= 0 || test_stall_seconds > 3600) {
                std::cerr << "sluiced: --test-stall-on-sigusr2 takes 1..3600 seconds\n";
                return 2;
            }
        } else if (a == "--check") {
            check = true;
        } else if (a == "--log-level" && i + 1 < argc) {
            std::string l = argv[++i];
            if (l == "debug")
                set_log_level(Level::debug);
            else if (l == "info")
                set_log_level(Level::info);
            else if (l == "warn")
                set_log_level(Level::warn);
            else if (l == "error")
                set_log_level(Level::error);
            else {
                std::cerr << "sluiced: unknown log level \"" << l << "\"\n";
                return 2;
            }
        } else if (a == "--version") {
            std::cout << "sluiced " << SLUICE_VERSION << "\n";
            return 0;
        } else if (a == "--schema") {
            std::cout << describe_schema();
            return 0;
        } else if (a == "--help" || a == "-h") {
            usage(std::cout);
            return 0;
        } else {
            std::cerr << "sluiced: unknown argument \"" << a << "\"\n";
            usage(std::cerr);
            return 2;
        }
    }

    auto loaded = load_config(config_path);
    auto diagnostics = loaded.diagnostics;
    if (loaded.ok()) {
        auto more = check_maps(*loaded.config, diagnostics, !check);
        diagnostics.insert(diagnostics.end(), more.begin(), more.end());
    }
    bool errors = !loaded.ok();
    for (const auto& d : diagnostics) {
        bool error = d.severity == Diagnostic::Severity::error;
        errors = errors || error;
        if (check) {
            std::cerr << d.str() << "\n";
        } else {
            // The daemon's stderr is its log: one key=value line per problem (docs/logs.md).
            LogLine(error ? Level::error : Level::warn, "config").kv("problem", d.str());
        }
    }
    if (check || errors) {
        if (check && !errors) {
            std::cerr << config_path << ": ok\n";
        }
        return errors ? 1 : 0;
    }
    ServerOptions opts;
    opts.config_path = config_path;
    opts.test_stall_seconds = test_stall_seconds;
    opts.make_maps = [](const Config& c, int shard) { return make_shard_maps(c, shard); };
    Server server(std::move(opts));
    return server.run(loaded.config);
}
