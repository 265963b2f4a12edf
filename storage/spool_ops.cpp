#include "storage/spool_ops.hpp"

#include <ctime>

#include "common/ascii.hpp"
#include "common/json.hpp"
#include "common/units.hpp"

namespace sluice::storage {
namespace {

constexpr const char* kHelp =
    "usage: sluicectl [--config FILE] queue COMMAND\n"
    "\n"
    "  queue list [--json]           every message still to deliver, with its recipients\n"
    "  queue show ID [--json]        one message: envelope, recipient states, content\n"
    "  queue delete ID               remove a message (no bounce)\n"
    "  queue hold ID                 keep a message from being delivered\n"
    "  queue release ID              deliver a held message again\n"
    "  queue flush                   retry every deferred recipient now\n"
    "  queue purge FILTER... [--dry-run] [--json]\n"
    "                                remove what the filters select (all must match):\n"
    "      --sender ADDR|@DOMAIN|<>  the envelope sender\n"
    "      --auth-user USER          the authenticated user that sent it\n"
    "      --client IP|CIDR          the client address it came from\n"
    "      --rcpt-domain DOMAIN      only recipients in this domain\n"
    "      --code CODE               only recipients accepted with this decision code\n"
    "      --older-than DURATION     received longer ago than this (e.g. 2h, 3d)\n"
    "\n"
    "Without the daemon, sluicectl works on spool.dir directly (locked: never both at once).\n";

Error usage(std::string msg) {
    return make_error(Errc::invalid, std::move(msg));
}

std::string angle(const std::string& a) {
    return "<" + a + ">";
}

std::string json_str(std::string_view s) {
    std::string o;
    append_json_string(o, s);
    return o;
}

std::string transport_text(const Transport& t) {
    if (!t.text.empty()) {
        return t.text;
    }
    if (t.kind == Transport::Kind::mx) {
        return "mx";
    }
    return t.kind == Transport::Kind::maildir ? "maildir:" + t.path
                                              : "smtp://" + t.host + ":" + std::to_string(t.port);
}

QueueOutput fail(int code, std::string msg) {
    QueueOutput o;
    o.exit_code = code;
    o.err = std::move(msg);
    return o;
}

QueueOutput from_error(const Error& e) {
    return fail(e.code == Errc::not_found ? 1 : 2, e.message);
}

}  // namespace

const char* queue_help() {
    return kHelp;
}

std::string format_utc(SysTime t) {
    std::time_t tt = std::chrono::system_clock::to_time_t(t);
    std::tm tm{};
    gmtime_r(&tt, &tm);
    char buf[32];
    std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return buf;
}

std::string format_entry_text(const QueueEntry& e) {
    std::string o = e.id + "  " + std::to_string(e.size) + "B  " + format_utc(e.received_at) +
                    (e.held ? "  HELD" : "") + "  from " + angle(e.sender) + "  client " +
                    e.client + (e.auth_user.empty() ? "" : "  auth " + ascii::printable(e.auth_user)) +
                    "\n";
    for (const auto& r : e.recipients) {
        o += "    " + angle(r.rcpt.address) + "  " + std::string(to_string(r.state)) + "  " +
             r.rcpt.code;
        if (r.state == RcptState::deferred) {
            o +=
                "  attempts=" + std::to_string(r.attempts) + "  next=" + format_utc(r.next_attempt);
        }
        if (!r.reason.empty()) {
            o += "  (" + ascii::printable(r.reason) + ")";
        }
        o += "\n";
    }
    return o;
}

std::string format_entry_json(const QueueEntry& e) {
    std::string o = "{\"id\":" + json_str(e.id) + ",\"sender\":" + json_str(e.sender) +
                    ",\"size\":" + std::to_string(e.size) +
                    ",\"received_at\":" + json_str(format_utc(e.received_at)) +
                    ",\"held\":" + (e.held ? "true" : "false") +
                    ",\"client\":" + json_str(e.client) + ",\"helo\":" + json_str(e.helo) +
                    ",\"listener\":" + json_str(e.listener) +
                    ",\"auth_user\":" + json_str(e.auth_user) + ",\"recipients\":[";
    for (std::size_t i = 0; i < e.recipients.size(); ++i) {
        const auto& r = e.recipients[i];
        o += (i ? "," : "");
        o += "{\"address\":" + json_str(r.rcpt.address) +
             ",\"deliver_to\":" + json_str(r.rcpt.deliver_to) +
             ",\"code\":" + json_str(r.rcpt.code) +
             ",\"transport\":" + json_str(transport_text(r.rcpt.transport)) +
             ",\"state\":" + json_str(to_string(r.state)) +
             ",\"attempts\":" + std::to_string(r.attempts) +
             ",\"next_attempt\":" + json_str(format_utc(r.next_attempt)) +
             ",\"reason\":" + json_str(r.reason) + "}";
    }
    return o + "]}";
}

Result<QueueCommand> parse_queue_command(const std::vector<std::string>& args) {
    if (args.empty()) {
        return usage("queue needs a command: list, show, delete, hold, release, flush, purge");
    }
    QueueCommand c;
    const std::string& verb = args[0];
    std::vector<std::string> rest(args.begin() + 1, args.end());
    auto take_flag = [&](const char* flag, bool& out) {
        for (auto it = rest.begin(); it != rest.end(); ++it) {
            if (*it == flag) {
                out = true;
                rest.erase(it);
                return;
            }
        }
    };
    take_flag("--json", c.json);
    if (verb == "list" || verb == "flush") {
        c.verb = verb == "list" ? QueueCommand::Verb::list : QueueCommand::Verb::flush;
        if (!rest.empty()) {
            return usage("queue " + verb + " takes no argument \"" + rest[0] + "\"");
        }
        return c;
    }
    if (verb == "show" || verb == "delete" || verb == "hold" || verb == "release") {
        c.verb = verb == "show"     ? QueueCommand::Verb::show
                 : verb == "delete" ? QueueCommand::Verb::remove
                 : verb == "hold"   ? QueueCommand::Verb::hold
                                    : QueueCommand::Verb::release;
        if (rest.size() != 1 || rest[0].empty() || rest[0][0] == '-') {
            return usage("queue " + verb + " needs exactly one message ID");
        }
        c.id = rest[0];
        return c;
    }
    if (verb != "purge") {
        return usage("unknown queue command \"" + verb + "\"");
    }
    c.verb = QueueCommand::Verb::purge;
    take_flag("--dry-run", c.dry_run);
    bool any = false;
    for (std::size_t i = 0; i < rest.size(); ++i) {
        const std::string& opt = rest[i];
        if (i + 1 >= rest.size()) {
            return usage(opt.rfind("--", 0) == 0 ? opt + " needs a value"
                                                 : "unexpected argument \"" + opt + "\"");
        }
        const std::string& v = rest[++i];
        std::string err;
        if (opt == "--sender") {
            c.filter.sender = v;
        } else if (opt == "--auth-user") {
            c.filter.auth_user = v;
        } else if (opt == "--rcpt-domain") {
            std::string d = v;
            if (!d.empty() && d[0] == '@') {
                d.erase(0, 1);
            }
            if (d.empty()) {
                return usage("--rcpt-domain needs a domain");
            }
            c.filter.rcpt_domain = d;
        } else if (opt == "--client") {
            auto cidr = parse_cidr(v, err);
            if (!cidr) {
                return usage("--client " + v + ": " + err);
            }
            c.filter.client = *cidr;
        } else if (opt == "--code") {
            c.filter.code = v;
        } else if (opt == "--older-than") {
            auto d = parse_duration(v, err);
            if (!d) {
                return usage("--older-than " + v + ": " + err);
            }
            c.filter.older_than = *d;
        } else {
            return usage("unknown purge option \"" + opt + "\"");
        }
        any = true;
    }
    if (!any) {
        // Purging everything by accident is too easy to type: say it explicitly.
        return usage("queue purge needs at least one filter (--older-than 0s selects everything)");
    }
    return c;
}

QueueOutput run_queue_command(Spool& spool, const QueueCommand& c) {
    QueueOutput o;
    switch (c.verb) {
        case QueueCommand::Verb::list: {
            auto all = spool.pending();
            std::size_t rcpts = 0;
            std::uint64_t bytes = 0;
            if (c.json) {
                o.out = "[";
            }
            for (std::size_t i = 0; i < all.size(); ++i) {
                rcpts += all[i].live_recipients();
                bytes += all[i].size;
                if (c.json) {
                    o.out += (i ? ",\n " : "") + format_entry_json(all[i]);
                } else {
                    o.out += format_entry_text(all[i]);
                }
            }
            if (c.json) {
                o.out += "]\n";
            } else {
                o.out += std::to_string(all.size()) + " messages, " + std::to_string(rcpts) +
                         " recipients to deliver, " + std::to_string(bytes) + " bytes\n";
            }
            return o;
        }
        case QueueCommand::Verb::show: {
            auto e = spool.entry(c.id);
            if (!e) {
                return fail(1, "no message " + c.id + " in the queue");
            }
            auto m = spool.load(c.id);
            if (!m.ok()) {
                return from_error(m.error());
            }
            if (c.json) {
                std::string obj = format_entry_json(*e);
                obj.pop_back();  // the closing brace: append the content
                o.out = obj + ",\"data\":" + json_str((*m)->data) + "}\n";
            } else {
                o.out = format_entry_text(*e) + "helo " + ascii::printable(e->helo) + "  listener " +
                        e->listener + "\n\n" + (*m)->data;
            }
            return o;
        }
        case QueueCommand::Verb::remove:
        case QueueCommand::Verb::hold:
        case QueueCommand::Verb::release: {
            Error e = c.verb == QueueCommand::Verb::remove ? spool.remove(c.id)
                      : c.verb == QueueCommand::Verb::hold ? spool.hold(c.id)
                                                           : spool.release(c.id);
            if (!e.ok()) {
                return from_error(e);
            }
            const char* done = c.verb == QueueCommand::Verb::remove ? "deleted"
                               : c.verb == QueueCommand::Verb::hold ? "held"
                                                                    : "released";
            o.out = std::string(done) + " " + c.id + "\n";
            return o;
        }
        case QueueCommand::Verb::flush: {
            auto n = spool.flush();
            if (!n.ok()) {
                return from_error(n.error());
            }
            o.out = std::to_string(*n) + " deferred recipients due now\n";
            return o;
        }
        case QueueCommand::Verb::purge: {
            auto r = spool.purge(c.filter, c.dry_run);
            if (!r.ok()) {
                return from_error(r.error());
            }
            const char* verb = c.dry_run ? "would remove" : "removed";
            if (c.json) {
                o.out = std::string("{\"dry_run\":") + (c.dry_run ? "true" : "false") +
                        ",\"recipients\":" + std::to_string(r->recipients) + ",\"messages\":[";
                for (std::size_t i = 0; i < r->messages.size(); ++i) {
                    o.out += (i ? "," : "") + json_str(r->messages[i]);
                }
                o.out += "],\"partial\":[";
                for (std::size_t i = 0; i < r->partial.size(); ++i) {
                    o.out += (i ? "," : "") + json_str(r->partial[i]);
                }
                o.out += "]}\n";
                return o;
            }
            for (const auto& id : r->messages) {
                o.out += std::string(verb) + " " + id + "\n";
            }
            for (const auto& id : r->partial) {
                o.out += std::string(verb) + " some recipients of " + id + "\n";
            }
            o.out += std::string(verb) + " " + std::to_string(r->messages.size()) +
                     " messages and " + std::to_string(r->recipients) + " recipients in all (" +
                     std::to_string(r->partial.size()) + " messages kept other recipients)\n";
            return o;
        }
    }
    return fail(2, "unknown queue command");
}

}  // namespace sluice::storage
