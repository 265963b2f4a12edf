#pragma once
// The operator's `queue` commands (README.md) as functions of a Spool: parse the
// arguments, run them, render text or JSON. `sluicectl queue ...` calls these on a spool it
// opened offline; the daemon's control socket can call the same ones on its live spool, so
// both paths print exactly the same thing.
//
// Trust: arguments come from the operator (validated; an unknown option is an error).
// Rendered text escapes nothing but control characters (addresses are canonical already);
// JSON is escaped by common/json.hpp.

#include <string>
#include <vector>

#include "storage/spool.hpp"

namespace sluice::storage {

struct QueueCommand {
    enum class Verb { list, show, remove, hold, release, purge, flush };
    Verb verb = Verb::list;
    QueueId id;          // show, delete, hold, release
    QueueFilter filter;  // purge
    bool dry_run = false;
    bool json = false;  // list, show, purge: machine-readable output
};

// `args` are the words after "queue" ("list --json", "purge --sender a@b.test --dry-run").
// Errc::invalid with a one-line message on bad usage.
Result<QueueCommand> parse_queue_command(const std::vector<std::string>& args);

// The usage text of the queue commands.
const char* queue_help();

struct QueueOutput {
    int exit_code = 0;  // 0 done; 1 nothing matched (unknown id); 2 an error
    std::string out;    // for stdout
    std::string err;    // one line for stderr (without the program name)
};

QueueOutput run_queue_command(Spool& spool, const QueueCommand& cmd);

// Renderings, also for the daemon's status pages.
std::string format_entry_text(const QueueEntry& e);  // one line + one per recipient
std::string format_entry_json(const QueueEntry& e);  // one JSON object
std::string format_utc(SysTime t);                   // "2026-11-22T10:00:00Z"

}  // namespace sluice::storage
