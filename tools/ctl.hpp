#pragma once
// sluicectl's command table. Each command lives in its own file (tools/cmd_*.cpp) and is
// a function from its arguments to an exit code: 0 success, 1 the operation found a
// problem (e.g. a relay was accepted, a config has errors), 2 usage or environment error.
// Errors are one clear line on stderr.

#include <string>
#include <string_view>
#include <vector>

namespace sluice::ctl {

struct Options {
    std::string config_path = "/etc/sluice/sluice.toml";
    bool config_given = false;
    bool json = false;
};

using Args = std::vector<std::string>;
using CommandFn = int (*)(const Args& args, const Options& opts);

struct Command {
    std::string_view name;
    std::string_view usage;    // one line: "map build NAME SOURCE | map add NAME KEY [VALUE] | ..."
    std::string_view summary;  // one line of what it does
    CommandFn run;
};

// Exit codes a script can rely on.
inline constexpr int kOk = 0;
inline constexpr int kProblem = 1;
inline constexpr int kUsage = 2;

// Prints "sluicectl: message" to stderr and returns kUsage (or `code`).
int fail(std::string_view message, int code = kUsage);

// True when args contain --help or -h (each command prints its own help then).
bool wants_help(const Args& args);

// Option parsing: when args[i] is `NAME VALUE` or `NAME=VALUE`, stores VALUE in `out`
// (advancing i past a separate value) and returns true; a missing value sets `error`.
bool take_value(const Args& args, std::size_t& i, std::string_view name, std::string& out,
                std::string& error);

// The commands; each defined in its own tools/cmd_*.cpp and listed in sluicectl.cpp.
int cmd_map(const Args& args, const Options& opts);
int cmd_relay_test(const Args& args, const Options& opts);
int cmd_log_report(const Args& args, const Options& opts);
int cmd_check(const Args& args, const Options& opts);
// Asking the running daemon over its control socket (tools/cmd_control.cpp).
int cmd_reload(const Args& args, const Options& opts);
int cmd_status(const Args& args, const Options& opts);
int cmd_stats(const Args& args, const Options& opts);
int cmd_explain(const Args& args, const Options& opts);
int cmd_dns(const Args& args, const Options& opts);
int cmd_rates(const Args& args, const Options& opts);
int cmd_user(const Args& args, const Options& opts);
// The spool, offline (tools/cmd_queue.cpp).
int cmd_queue(const Args& args, const Options& opts);

}  // namespace sluice::ctl
