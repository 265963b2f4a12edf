// sluicectl map: build, edit and query the LMDB maps offline (docs/maps.md).
//
// Works on the files in maps.dir directly; a running daemon notices each new generation by
// itself (storage/maps.hpp), so no socket is needed. Every change publishes a new file
// atomically: a reader sees either the old map or the new one, never a mixture.
//
// Trust: run by the operator, but arguments and sources are validated like any input.
// Exit codes (tools/ctl.hpp): 0 done; 1 the source has errors (nothing published), `get`
// found nothing, or `del` found no such key; 2 usage, config or environment error.

#include <cstdio>
#include <filesystem>
#include <iostream>
#include <string>

#include "common/config.hpp"
#include "common/json.hpp"
#include "common/log.hpp"
#include "storage/map_check.hpp"
#include "storage/maps.hpp"
#include "tools/ctl.hpp"

namespace sluice::ctl {

namespace {

std::string json_string(std::string_view s) {
    std::string out;
    append_json_string(out, s);
    return out;
}

namespace fs = std::filesystem;
using storage::MapId;

constexpr const char* kHelp =
    "usage: sluicectl [--config FILE] [--json] map build NAME SOURCE\n"
    "       sluicectl [--config FILE] map add NAME KEY [VALUE...]\n"
    "       sluicectl [--config FILE] map del NAME KEY\n"
    "       sluicectl [--config FILE] [--json] map get NAME KEY\n"
    "       sluicectl [--config FILE] [--json] map list NAME\n"
    "\n"
    "Maps live in maps.dir of the config, one NAME.mdb each; every change publishes a new\n"
    "file atomically and the daemon picks it up by itself.\n"
    "\n"
    "  build   parse SOURCE (one 'KEY [VALUE]' a line, '#' comments) and publish it; any\n"
    "          error is reported as FILE:LINE:COL and nothing is published\n"
    "  add     insert or replace one entry (VALUE words are joined by one space)\n"
    "  del     remove one entry\n"
    "  get     look KEY up as the daemon does (an IP address in a CIDR map: longest\n"
    "          prefix match); prints KEY, VALUE and the entry's source FILE:LINE\n"
    "  list    print every entry as a source line ('KEY VALUE'; --json adds the source)\n"
    "\n"
    "NAME is one of: local_domains local_addresses catch_all privileged_networks\n"
    "                connection_filter access users rate_exempt\n";

std::string entry_json(const std::string& key, const std::string& value,
                       const std::string& source) {
    return "{\"key\":" + json_string(key) + ",\"value\":" + json_string(value) +
           ",\"source\":" + json_string(source) + "}";
}

std::string entry_line(const std::string& key, const std::string& value) {
    return value.empty() ? key : key + " " + value;
}

// The config (for the maps directory and the open-relay lint); prints its errors when it
// has any.
std::shared_ptr<const Config> maps_config(const Options& opts) {
    LoadResult r = load_config(opts.config_path);
    if (!r.ok()) {
        for (const auto& d : r.diagnostics) {
            std::cerr << d.str() << "\n";
        }
        fail("config " + opts.config_path + " has errors");
        return nullptr;
    }
    return r.config;
}

// Refuses new contents of a map that the open-relay lint rejects (a privileged network
// of 0.0.0.0/0...): the daemon would refuse to switch to them, and `--check` and the next
// start-up would fail. Returns kOk or the exit code after printing every problem.
int lint_before_publish(const Config& cfg, MapId map, const std::vector<storage::MapEntry>& entries) {
    auto errors = storage::lint_map_contents(cfg, map, entries);
    if (errors.empty()) {
        return kOk;
    }
    for (const auto& d : errors) {
        std::cerr << d.str() << "\n";
    }
    return fail("map " + std::string(storage::map_file_name(map)) +
                    ": refused by the open-relay check; nothing published",
                kProblem);
}

int usage_error(const std::string& message) {
    return fail(message + " (see: sluicectl map --help)");
}

int do_build(const Config& cfg, MapId map, const std::string& source) {
    const std::string& dir = cfg.maps.dir;
    std::error_code ec;
    std::string path = fs::absolute(source, ec).lexically_normal().string();
    if (ec) {
        path = source;
    }
    if (storage::map_is_linted(map)) {
        if (auto parsed = storage::parse_map_file(map, path); parsed.ok()) {
            if (int rc = lint_before_publish(cfg, map, parsed.entries); rc != kOk) {
                return rc;
            }
        }  // (a source with errors is refused, with every error, by build_map below)
    }
    storage::BuildReport report = storage::build_map(dir, map, path);
    if (!report.diagnostics.empty()) {
        for (const auto& d : report.diagnostics) {
            std::cerr << d.str() << "\n";
        }
        return fail("map " + std::string(storage::map_file_name(map)) + ": " +
                        std::to_string(report.diagnostics.size()) + " error(s) in " + path +
                        "; nothing published",
                    kProblem);
    }
    if (!report.ok()) {
        return fail("map " + std::string(storage::map_file_name(map)) + ": " +
                    report.error.message);
    }
    std::cout << "map " << storage::map_file_name(map) << ": published "
              << report.published->entries << " entries to " << report.published->path << "\n";
    return kOk;
}

int do_add(const Config& cfg, MapId map, const Args& args) {
    const std::string& dir = cfg.maps.dir;
    std::string value;
    for (std::size_t i = 3; i < args.size(); ++i) {
        value += (i > 3 ? " " : "") + args[i];
    }
    const std::string source = "map add " + utc_timestamp();
    std::string key_error;
    auto key = storage::map_is_linted(map) ? storage::normalise_key(map, args[2], key_error)
                                           : std::nullopt;
    if (key) {
        auto current = storage::read_map(dir, map);
        if (current.ok()) {
            std::vector<storage::MapEntry> next;
            for (auto& e : current->entries) {
                if (e.key != *key) {
                    next.push_back(std::move(e));
                }
            }
            next.push_back({*key, value, source});
            if (int rc = lint_before_publish(cfg, map, next); rc != kOk) {
                return rc;
            }
        }
    }  // (a bad key or an unreadable map is reported by add_map_entry below)
    auto r = storage::add_map_entry(dir, map, args[2], value, source);
    if (!r.ok()) {
        return fail(r.error().message);
    }
    std::string err;
    std::cout << "map " << storage::map_file_name(map) << ": "
              << (*r == storage::EditOutcome::replaced ? "replaced " : "added ")
              << storage::normalise_key(map, args[2], err).value_or(args[2]) << "\n";
    return kOk;
}

int do_del(const std::string& dir, MapId map, const std::string& key) {
    auto r = storage::remove_map_entry(dir, map, key);
    if (!r.ok()) {
        return fail(r.error().message);
    }
    if (*r == storage::EditOutcome::not_found) {
        return fail("map " + std::string(storage::map_file_name(map)) + ": no entry " + key,
                    kProblem);
    }
    std::cout << "map " << storage::map_file_name(map) << ": removed " << key << "\n";
    return kOk;
}

int do_get(const std::string& dir, MapId map, const std::string& key, const Options& opts) {
    const std::string name(storage::map_file_name(map));
    policy::Lookup found;
    std::string err;
    if (auto ip = parse_ip(key); ip && storage::map_has_cidr_keys(map)) {
        storage::MapReader reader(dir, storage::MapReader::Options{std::chrono::milliseconds(0)});
        found = reader.find_cidr(map, *ip);
    } else if (storage::map_has_cidr_keys(map) && key.find('/') != std::string::npos) {
        // An exact prefix: what is written for it, not what covers it.
        auto canonical = storage::normalise_key(map, key, err);
        if (!canonical) {
            return fail("map " + name + ": " + err);
        }
        auto contents = storage::read_map(dir, map);
        if (!contents.ok()) {
            return fail(contents.error().message);
        }
        for (const auto& e : contents->entries) {
            if (e.key == *canonical) {
                found.status = policy::Lookup::Status::found;
                found.key = e.key;
                found.value = e.value;
                found.source = e.source;
            }
        }
    } else {
        auto canonical = storage::normalise_key(map, key, err);
        if (!canonical) {
            return fail("map " + name + ": " + err);
        }
        storage::MapReader reader(dir, storage::MapReader::Options{std::chrono::milliseconds(0)});
        found = reader.find(map, *canonical);
    }
    if (found.unavailable()) {
        return fail("map " + name + " is unreadable (see the log line above)");
    }
    if (!found.found()) {
        return fail("map " + name + ": nothing found for " + key, kProblem);
    }
    if (opts.json) {
        std::cout << entry_json(found.key, found.value, found.source) << "\n";
    } else {
        std::cout << found.key << "\t" << found.value << "\t" << found.source << "\n";
    }
    return kOk;
}

int do_list(const std::string& dir, MapId map, const Options& opts) {
    auto contents = storage::read_map(dir, map);
    if (!contents.ok()) {
        return fail(contents.error().message);
    }
    if (opts.json) {
        std::string out = "[";
        for (std::size_t i = 0; i < contents->entries.size(); ++i) {
            const auto& e = contents->entries[i];
            out += (i ? ",\n " : "") + entry_json(e.key, e.value, e.source);
        }
        std::cout << out << "]\n";
        return kOk;
    }
    for (const auto& e : contents->entries) {
        std::cout << entry_line(e.key, e.value) << "\n";
    }
    return kOk;
}

}  // namespace

int cmd_map(const Args& args, const Options& opts) {
    if (wants_help(args)) {
        std::cout << kHelp;
        return kOk;
    }
    if (args.empty()) {
        return usage_error("map: missing subcommand (build, add, del, get, list)");
    }
    const std::string& sub = args[0];
    std::size_t min = 0;
    std::size_t max = 0;
    if (sub == "build") {
        min = max = 3;
    } else if (sub == "add") {
        min = 3;
        max = static_cast<std::size_t>(-1);
    } else if (sub == "del" || sub == "get") {
        min = max = 3;
    } else if (sub == "list") {
        min = max = 2;
    } else {
        return usage_error("map: unknown subcommand \"" + sub + "\"");
    }
    if (args.size() < min || args.size() > max) {
        return usage_error("map " + sub + ": wrong number of arguments");
    }
    auto map = storage::map_from_name(args[1]);
    if (!map) {
        return usage_error("map: unknown map \"" + args[1] + "\"");
    }
    auto cfg = maps_config(opts);
    if (!cfg) {
        return kUsage;
    }
    const std::string* dir = &cfg->maps.dir;
    // The reader's own info lines (map_loaded) are noise on a terminal.
    set_log_level(Level::warn);
    if (sub == "build") {
        return do_build(*cfg, *map, args[2]);
    }
    if (sub == "add") {
        return do_add(*cfg, *map, args);
    }
    if (sub == "del") {
        return do_del(*dir, *map, args[2]);
    }
    if (sub == "get") {
        return do_get(*dir, *map, args[2], opts);
    }
    return do_list(*dir, *map, opts);
}

}  // namespace sluice::ctl
