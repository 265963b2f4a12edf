// sluicectl: the operator's control CLI (README.md). Talks to the daemon over the
// control socket where a live daemon is needed, and works offline on the config, the
// maps and the spool where that makes sense.
//
// Trust: run by the operator; every argument is still validated.

#include <csignal>
#include <cstdio>
#include <iostream>

#include "tools/ctl.hpp"

namespace sluice::ctl {

int fail(std::string_view message, int code) {
    std::cerr << "sluicectl: " << message << "\n";
    return code;
}

bool wants_help(const Args& args) {
    for (const auto& a : args) {
        if (a == "--help" || a == "-h") {
            return true;
        }
    }
    return false;
}

bool take_value(const Args& args, std::size_t& i, std::string_view name, std::string& out,
                std::string& error) {
    const std::string& a = args[i];
    if (a.size() > name.size() && a.compare(0, name.size(), name) == 0 && a[name.size()] == '=') {
        out = a.substr(name.size() + 1);
        return true;
    }
    if (a == name) {
        if (i + 1 >= args.size()) {
            error = std::string(name) + " needs a value";
            return true;
        }
        out = args[++i];
        return true;
    }
    return false;
}

namespace {

// clang-format off
const Command commands[] = {
    // One row per command; each defined in its own tools/cmd_*.cpp.
    {"reload", "reload", "re-read config and maps in the running daemon, all or nothing",
     cmd_reload},
    {"status", "status", "version, uptime, generation, listeners, sessions, queue", cmd_status},
    {"stats", "stats [--json]", "the daemon's counters (the numbers of /metrics)", cmd_stats},
    {"explain", "explain --client IP [--auth USER] [--helo NAME] --from ADDR --to ADDR [--listener NAME]",
     "run the live policy on one envelope: decision, code, rule, source", cmd_explain},
    {"dns", "dns DOMAIN [--json]",
     "what delivery by MX would do for DOMAIN: MX set, addresses, cached TTLs", cmd_dns},
    {"rates", "rates [CLIENT]", "the [rates] limits; with CLIENT, its counters now", cmd_rates},
    {"map", "map build NAME SOURCE | map add NAME KEY [VALUE] | map del NAME KEY | map get NAME KEY | map list NAME",
     "build, edit and query the LMDB maps (published atomically)", cmd_map},
    {"check", "check [--json]", "lint config and maps for open-relay risks", cmd_check},
    {"relay-test", "relay-test HOST[:PORT] [--local-domain D] [--outside ADDR] [--json]",
     "probe a server with the open-relay battery; exit 1 if a relay was accepted",
     cmd_relay_test},
    {"log-report", "log-report [--since T] [--until T] [--code C] [--json] [FILE...]",
     "summarise the decision log: codes, denied attempts, weak grants", cmd_log_report},
    {"user", "user add NAME [--senders ADDR,...] | user passwd NAME | user del NAME",
     "manage SMTP AUTH users (password read from stdin, stored hashed)", cmd_user},
    {"queue", "queue list | show ID | delete ID | hold ID | release ID | flush | purge FILTER... [--dry-run]",
     "the spool: list, inspect, hold, delete, purge (offline while the daemon is stopped)", cmd_queue},
};
// clang-format on

void usage(std::FILE* out) {
    std::fprintf(out, "usage: sluicectl [--config FILE] [--json] COMMAND [ARGS]\n\ncommands:\n");
    for (const auto& c : commands) {
        std::fprintf(out, "  %-12.*s %.*s\n", static_cast<int>(c.name.size()), c.name.data(),
                     static_cast<int>(c.summary.size()), c.summary.data());
    }
    std::fprintf(out, "\n'sluicectl COMMAND --help' describes a command.\n");
}

}  // namespace
}  // namespace sluice::ctl

int main(int argc, char** argv) {
    using namespace sluice::ctl;
    std::signal(SIGPIPE, SIG_IGN);
    Options opts;
    Args rest;
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        if (a == "--config") {
            if (i + 1 >= argc) {
                return fail("--config needs a FILE");
            }
            opts.config_path = argv[++i];
            opts.config_given = true;
        } else if (a.rfind("--config=", 0) == 0) {
            opts.config_path = a.substr(9);
            opts.config_given = true;
        } else if (a == "--json") {
            opts.json = true;
        } else {
            rest.push_back(std::move(a));
        }
    }
    if (rest.empty() || ((rest[0] == "--help" || rest[0] == "-h" || rest[0] == "help"))) {
        usage(rest.empty() ? stderr : stdout);
        return rest.empty() ? kUsage : kOk;
    }
    std::string name = rest[0];
    rest.erase(rest.begin());
    for (const auto& c : commands) {
        if (c.name == name) {
            return c.run(rest, opts);
        }
    }
    return fail("unknown command \"" + name + "\" (try sluicectl --help)");
}
