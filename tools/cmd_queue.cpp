// sluicectl queue list|show|delete|hold|release|flush|purge (README.md): the spool.
//
// Works offline on spool.dir from the config: opens the spool the way the daemon does
// (its flock, then recovery) and runs storage/spool_ops.hpp's command on it. While the
// daemon runs it holds the spool's lock: the same command then goes through the control
// socket and the daemon runs the same function on its live spool, so the output is the
// same either way.
//
// Trust: run by the operator; the arguments are validated before the spool is opened.
// Exit codes: 0 done; 1 no such message; 2 usage, config or spool error.

#include <chrono>
#include <iostream>

#include "common/config.hpp"
#include "common/log.hpp"
#include "storage/spool.hpp"
#include "storage/spool_ops.hpp"
#include "tools/control_client.hpp"
#include "tools/ctl.hpp"

namespace sluice::ctl {

namespace {

// The daemon holds the spool: ask it to run the command.
int via_daemon(const Args& args, const Options& opts) {
    std::string error;
    auto path = control_socket_path(opts.config_path, error);
    if (!path) {
        return fail(error);
    }
    auto client = ControlClient::connect(*path, error);
    if (!client) {
        return fail(error);
    }
    nlohmann::json words = nlohmann::json::array();
    for (const auto& a : args) {
        words.push_back(a);
    }
    if (opts.json) {
        words.push_back("--json");
    }
    auto reply = client->call(nlohmann::json{{"cmd", "queue"}, {"args", words}},
                              std::chrono::minutes(5), error);
    if (!reply) {
        return fail(error);
    }
    if (!reply->value("ok", false)) {
        return fail(reply->value("error", std::string("queue command refused")), kProblem);
    }
    std::cout << reply->value("out", std::string());
    std::string err = reply->value("err", std::string());
    int code = reply->value("exit", kUsage);
    if (!err.empty()) {
        return fail(err, code == 0 ? kUsage : code);
    }
    return code;
}

}  // namespace

int cmd_queue(const Args& args, const Options& opts) {
    if (wants_help(args)) {
        std::cout << storage::queue_help();
        return kOk;
    }
    auto cmd = storage::parse_queue_command(args);
    if (!cmd.ok()) {
        return fail(cmd.error().message + " (see: sluicectl queue --help)");
    }
    cmd->json = cmd->json || opts.json;

    LoadResult cfg = load_config(opts.config_path);
    if (!cfg.ok()) {
        for (const auto& d : cfg.diagnostics) {
            std::cerr << d.str() << "\n";
        }
        return fail("config " + opts.config_path + " has errors");
    }
    set_log_level(Level::warn);  // recovery's info lines are the daemon's business
    storage::SpoolOptions so;
    so.dir = cfg.config->spool.dir;
    so.min_free_bytes = 0;  // the operator may always look and clean up
    so.reserve_bytes = cfg.config->spool.reserve;
    auto spool = storage::Spool::open(so);
    if (!spool.ok()) {
        if (spool.error().code == storage::Errc::busy) {
            return via_daemon(args, opts);
        }
        return fail("spool " + so.dir + ": " + spool.error().message);
    }
    storage::QueueOutput out = storage::run_queue_command(**spool, *cmd);
    (*spool)->close();
    std::cout << out.out;
    if (!out.err.empty()) {
        return fail(out.err, out.exit_code == 0 ? kUsage : out.exit_code);
    }
    return out.exit_code;
}

}  // namespace sluice::ctl
