// sluicectl user: the SMTP AUTH users in the LMDB `users` map (docs/maps.md).
//
// Passwords are read from stdin only (never from the command line, where `ps` and shell
// history would see them): on a terminal with echo off and asked twice, otherwise one
// line. They are stored only as crypt(3) hashes (daemon/auth.hpp) and never printed. The
// map value format (hash and allowed senders) is daemon/auth.hpp's.
//
// Trust: run by the operator; the user name and sender addresses are validated like
// network input. Exit codes (tools/ctl.hpp): 0 done; 1 the user exists (add), does not
// exist (del, passwd), or the passwords typed differ; 2 usage, config or environment error.

#include <signal.h>
#include <string.h>  // explicit_bzero
#include <termios.h>
#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <optional>
#include <string>

#include "common/config.hpp"
#include "common/log.hpp"
#include "daemon/auth.hpp"
#include "daemon/sasl.hpp"
#include "storage/maps.hpp"
#include "tools/ctl.hpp"

namespace sluice::ctl {

namespace {

constexpr const char* kHelp =
    "usage: sluicectl [--config FILE] user add NAME [--senders ADDR,...]\n"
    "       sluicectl [--config FILE] user passwd NAME\n"
    "       sluicectl [--config FILE] user del NAME\n"
    "\n"
    "Manages the SMTP AUTH users in the `users` map (maps.dir of the config); the daemon\n"
    "picks up each change by itself.\n"
    "\n"
    "  add     create NAME; fails if it exists\n"
    "  passwd  set a new password for NAME (its senders are kept)\n"
    "  del     remove NAME\n"
    "\n"
    "The password is read from standard input: typed twice without echo on a terminal,\n"
    "otherwise the first line (e.g. from a file or a pipe). It is never accepted on the\n"
    "command line and never printed; only a salted yescrypt hash is stored.\n"
    "\n"
    "--senders lists the MAIL FROM addresses NAME may use on listeners with\n"
    "sender_login_match = true: local@domain, @domain (any address there) or <> (the\n"
    "null sender). A NAME that is an address may always send as itself.\n";

int usage_error(const std::string& message) {
    return fail(message + " (see: sluicectl user --help)");
}

std::optional<std::string> maps_dir(const Options& opts) {
    LoadResult r = load_config(opts.config_path);
    if (!r.ok()) {
        for (const auto& d : r.diagnostics) {
            std::cerr << d.str() << "\n";
        }
        fail("config " + opts.config_path + " has errors");
        return std::nullopt;
    }
    return r.config->maps.dir;
}

// --- reading the password ----------------------------------------------------------------

// The terminal settings to restore if a signal arrives while echo is off.
termios g_saved_tty{};
volatile sig_atomic_t g_echo_off = 0;

void restore_tty_and_reraise(int sig) {
    if (g_echo_off) {
        tcsetattr(STDIN_FILENO, TCSAFLUSH, &g_saved_tty);
    }
    signal(sig, SIG_DFL);
    raise(sig);
}

class EchoOff {
  public:
    EchoOff() {
        if (tcgetattr(STDIN_FILENO, &g_saved_tty) != 0) {
            return;
        }
        struct sigaction sa {};
        sa.sa_handler = restore_tty_and_reraise;
        for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGQUIT}) {
            sigaction(sig, &sa, nullptr);
        }
        termios t = g_saved_tty;
        t.c_lflag &= ~static_cast<tcflag_t>(ECHO);
        t.c_lflag |= ECHONL;
        g_echo_off = tcsetattr(STDIN_FILENO, TCSAFLUSH, &t) == 0;
    }
    ~EchoOff() {
        if (g_echo_off) {
            tcsetattr(STDIN_FILENO, TCSAFLUSH, &g_saved_tty);
            g_echo_off = 0;
        }
        for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGQUIT}) {
            signal(sig, SIG_DFL);
        }
    }
    EchoOff(const EchoOff&) = delete;
    EchoOff& operator=(const EchoOff&) = delete;
};

// One line from stdin without its line ending; nullopt at end of input before any byte.
std::optional<std::string> read_line() {
    std::string line;
    bool any = false;
    for (;;) {
        int c = std::getchar();
        if (c == EOF) {
            break;
        }
        any = true;
        if (c == '\n') {
            break;
        }
        line.push_back(static_cast<char>(c));
        if (line.size() > auth::limits::kMaxPassword + 1) {
            // Keep consuming the line but never hold more than a useless prefix of it.
            line.resize(auth::limits::kMaxPassword + 1);
        }
    }
    if (!line.empty() && line.back() == '\r') {
        line.pop_back();
    }
    if (!any) {
        return std::nullopt;
    }
    return line;
}

struct Wiped {
    std::string s;
    ~Wiped() { explicit_bzero(s.data(), s.size()); }
};

// The new password, or nullopt after printing why not (with `code` set).
std::optional<std::string> read_password(const std::string& name, int& code) {
    code = kUsage;
    if (!isatty(STDIN_FILENO)) {
        auto line = read_line();
        if (!line) {
            fail("no password on standard input");
            return std::nullopt;
        }
        return line;
    }
    Wiped first;
    Wiped second;
    {
        EchoOff quiet;
        std::cerr << "New password for " << name << ": " << std::flush;
        auto a = read_line();
        if (!a) {
            fail("no password given");
            return std::nullopt;
        }
        first.s = std::move(*a);
        std::cerr << "Retype the password: " << std::flush;
        auto b = read_line();
        second.s = b.value_or("");
        if (b) {
            explicit_bzero(b->data(), b->size());
        }
    }
    if (first.s != second.s) {
        code = kProblem;
        fail("the passwords do not match; nothing changed", kProblem);
        return std::nullopt;
    }
    return first.s;
}

// The hash of a password read from stdin, or nullopt after printing why not.
std::optional<std::string> new_hash(const std::string& name, int& code) {
    auto pw = read_password(name, code);
    if (!pw) {
        return std::nullopt;
    }
    Wiped wiped{std::move(*pw)};
    std::string error;
    auto hash = auth::hash_password(wiped.s, error);
    if (!hash) {
        code = kUsage;
        fail("password refused: " + error);
        return std::nullopt;
    }
    return hash;
}

// --- senders ------------------------------------------------------------------------------

// "A@Example.TEST,@Sales.example.test,<>" -> canonical list, or nullopt and `error`.
std::optional<std::vector<std::string>> parse_senders(std::string_view list, std::string& error) {
    std::vector<std::string> out;
    for (;;) {
        std::size_t comma = list.find(',');
        std::string_view item = list.substr(0, comma);
        std::string err;
        if (item == "<>") {
            out.emplace_back(item);
        } else if (!item.empty() && item.front() == '@') {
            auto d = storage::normalise_domain(item.substr(1), err);
            if (!d) {
                error = "sender \"" + std::string(item) + "\": " + err;
                return std::nullopt;
            }
            out.push_back("@" + *d);
        } else {
            auto a = storage::normalise_address(item, err);
            if (!a) {
                error = "sender \"" + std::string(item) +
                        "\": " + (item.empty() ? std::string("empty") : err);
                return std::nullopt;
            }
            out.push_back(*a);
        }
        if (comma == std::string_view::npos) {
            return out;
        }
        list.remove_prefix(comma + 1);
    }
}

std::string check_name(const std::string& name) {
    if (!sasl::valid_identity(name)) {
        return "user name must be 1 to 255 octets of UTF-8 without control characters";
    }
    if (name.find(' ') != std::string::npos) {
        return "user name must not contain blanks";
    }
    return {};
}

// The current map value of `name`; nullopt when absent (an error sets `failed`).
std::optional<std::string> current_value(const std::string& dir, const std::string& name,
                                         bool& failed) {
    failed = false;
    auto contents = storage::read_map(dir, storage::MapId::users);
    if (!contents.ok()) {
        fail(contents.error().message);
        failed = true;
        return std::nullopt;
    }
    for (const auto& e : contents->entries) {
        if (e.key == name) {
            return e.value;
        }
    }
    return std::nullopt;
}

int store(const std::string& dir, const std::string& name, const std::string& value,
          std::string_view what) {
    auto r = storage::add_map_entry(dir, storage::MapId::users, name, value,
                                    std::string(what) + " " + utc_timestamp());
    if (!r.ok()) {
        return fail(r.error().message);
    }
    return kOk;
}

int do_add(const std::string& dir, const std::string& name,
           const std::vector<std::string>& senders) {
    bool failed = false;
    if (current_value(dir, name, failed)) {
        return fail("user " + name + " exists (use: sluicectl user passwd " + name + ")", kProblem);
    }
    if (failed) {
        return kUsage;
    }
    int code = kUsage;
    auto hash = new_hash(name, code);
    if (!hash) {
        return code;
    }
    auth::UserEntry entry{*hash, senders};
    if (int rc = store(dir, name, auth::format_user_entry(entry), "user add"); rc != kOk) {
        return rc;
    }
    std::cout << "user " << name << ": added";
    if (!senders.empty()) {
        std::cout << " (" << senders.size() << " sender pattern(s))";
    }
    std::cout << "\n";
    return kOk;
}

int do_passwd(const std::string& dir, const std::string& name) {
    bool failed = false;
    auto value = current_value(dir, name, failed);
    if (failed) {
        return kUsage;
    }
    if (!value) {
        return fail("no user " + name + " (use: sluicectl user add " + name + ")", kProblem);
    }
    int code = kUsage;
    auto hash = new_hash(name, code);
    if (!hash) {
        return code;
    }
    // Keep everything after the hash (the senders) even if the old hash is of a scheme
    // that is no longer accepted: replacing such a hash is what passwd is for.
    std::size_t semi = value->find(';');
    std::string rest = semi == std::string::npos ? "" : value->substr(semi);
    std::string new_value = *hash + rest;
    std::string error;
    if (!auth::parse_user_entry(new_value, error)) {
        return fail("user " + name + ": stored senders are malformed (" + error +
                    "); remove and add the user again");
    }
    if (int rc = store(dir, name, new_value, "user passwd"); rc != kOk) {
        return rc;
    }
    std::cout << "user " << name << ": password changed\n";
    return kOk;
}

int do_del(const std::string& dir, const std::string& name) {
    auto r = storage::remove_map_entry(dir, storage::MapId::users, name);
    if (!r.ok()) {
        return fail(r.error().message);
    }
    if (*r == storage::EditOutcome::not_found) {
        return fail("no user " + name, kProblem);
    }
    std::cout << "user " << name << ": removed\n";
    return kOk;
}

}  // namespace

int cmd_user(const Args& args, const Options& opts) {
    if (wants_help(args)) {
        std::cout << kHelp;
        return kOk;
    }
    if (args.empty()) {
        return usage_error("user: missing subcommand (add, passwd, del)");
    }
    const std::string& sub = args[0];
    if (sub != "add" && sub != "passwd" && sub != "del") {
        return usage_error("user: unknown subcommand \"" + sub + "\"");
    }
    std::optional<std::string> name;
    std::optional<std::string> senders_arg;
    for (std::size_t i = 1; i < args.size(); ++i) {
        const std::string& a = args[i];
        if (sub == "add" && a == "--senders") {
            if (i + 1 >= args.size()) {
                return usage_error("--senders needs a list");
            }
            senders_arg = args[++i];
        } else if (sub == "add" && a.rfind("--senders=", 0) == 0) {
            senders_arg = a.substr(10);
        } else if (a.rfind("-", 0) == 0) {
            // Also catches an attempt at --password: passwords come from stdin only.
            return usage_error("user " + sub + ": unknown option " + a.substr(0, a.find('=')));
        } else if (!name) {
            name = a;
        } else {
            return usage_error("user " + sub + ": too many arguments");
        }
    }
    if (!name) {
        return usage_error("user " + sub + ": missing NAME");
    }
    if (auto problem = check_name(*name); !problem.empty()) {
        return usage_error(problem);
    }
    std::vector<std::string> senders;
    if (senders_arg) {
        std::string error;
        auto parsed = parse_senders(*senders_arg, error);
        if (!parsed) {
            return usage_error("--senders: " + error);
        }
        senders = std::move(*parsed);
        if (senders.size() > auth::limits::kMaxSenders) {
            return usage_error("--senders: more than " + std::to_string(auth::limits::kMaxSenders) +
                               " addresses");
        }
    }
    auto dir = maps_dir(opts);
    if (!dir) {
        return kUsage;
    }
    set_log_level(Level::warn);  // the map reader's info lines are noise here
    if (sub == "add") {
        return do_add(*dir, *name, senders);
    }
    if (sub == "passwd") {
        return do_passwd(*dir, *name);
    }
    return do_del(*dir, *name);
}

}  // namespace sluice::ctl
