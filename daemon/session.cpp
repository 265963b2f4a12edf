#include "daemon/session.hpp"

#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <ctime>

#include "common/ascii.hpp"
#include "common/date.hpp"
#include "common/log.hpp"

namespace sluice::smtp {
namespace {

// Unprocessed input kept while a commit is in flight (pipelined commands after "."):
// beyond this the connection stops reading until the session catches up.
constexpr std::size_t kMaxPendingInput = 64 * 1024;

// RFC 5321 §4.5.3.1.8 allows rejecting excess recipients; RCPT attempts beyond this count
// (accepted or not) end the session as abusive.
constexpr std::uint32_t kMaxRcptAttemptsFactor = 2;

// RFC 5321 §4.1.1.1: EHLO/HELO take a domain or an address literal.
bool valid_helo(std::string_view s) {
    if (s.empty() || s.size() > 255) {
        return false;
    }
    if (s.front() == '[') {
        return s.back() == ']' && s.size() > 2 &&
               std::all_of(s.begin() + 1, s.end() - 1, [](char c) {
                   return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == ':';
               });
    }
    return std::all_of(s.begin(), s.end(), [](char c) {
        return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.' || c == '_';
    });
}

// Counts Received: fields in the header section (RFC 5321 §6.3 loop detection).
std::uint32_t count_hops(std::string_view data) {
    std::uint32_t hops = 0;
    std::size_t pos = 0;
    while (pos < data.size()) {
        std::size_t eol = data.find("\r\n", pos);
        if (eol == std::string_view::npos || eol == pos) {
            break;  // end of data or the empty line that ends the header section
        }
        std::string_view line = data.substr(pos, eol - pos);
        if (line.size() >= 9 && ascii::iequals(line.substr(0, 9), "Received:")) {
            ++hops;
        }
        pos = eol + 2;
    }
    return hops;
}

std::string angle(std::string_view a) {
    return "<" + std::string(a) + ">";
}

}  // namespace

std::string new_message_id(int shard) {
    // Unique per host and over restarts: the process start in milliseconds and its pid
    // (a restart within the same second must not reuse the ids of recovered messages),
    // the shard, and a per-shard sequence; base 31 without vowels.
    static constexpr char digits[] = "0123456789BCDFGHJKLMNPQRSTVWXYZ";
    static const std::string prefix = [] {
        auto ms =
            static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                           std::chrono::system_clock::now().time_since_epoch())
                                           .count());
        std::uint64_t v = ms * 1000003ull + static_cast<std::uint64_t>(::getpid());
        std::string p;
        do {
            p.push_back(digits[v % 31]);
            v /= 31;
        } while (v);
        return p;
    }();
    thread_local std::uint64_t seq = 0;
    std::uint64_t s = ++seq;
    std::string tail;
    do {
        tail.push_back(digits[s % 31]);
        s /= 31;
    } while (s);
    std::reverse(tail.begin(), tail.end());
    return prefix + digits[shard % 31] + tail;
}

Session::Session(SessionParams p) : p_(std::move(p)), cfg_(*p_.snapshot->config) {
    p_.metrics->sessions_active.add(1);
    tls_active_ = p_.tls_active;
}

Session::~Session() {
    p_.metrics->sessions_active.add(-1);
}

policy::Facts Session::facts() const {
    policy::Facts f;
    f.listener = p_.listener->name;
    f.role = p_.listener->role;
    f.client = p_.client;
    f.helo = helo_;
    f.tls = tls_active_;
    f.auth_user = auth_user_;
    return f;
}

void Session::start(Clock::time_point now) {
    started_ = now;
    last_input_ = now;
    auto d = policy::decide_connect(facts(), p_.snapshot->rules, *p_.maps);
    if (d.verdict != policy::Verdict::accept) {
        auto& m =
            p_.metrics->connections[p_.listener_index][static_cast<int>(ConnResult::filtered)];
        m.add();
        log_decision("connect", d, {}, {});
        reply_decision(d);
        close(d.verdict == policy::Verdict::defer ? "deferred" : "refused");
        return;
    }
    if (p_.rates != nullptr && rates::Settings::from_config(cfg_).any()) {
        // Looked up once: the limits are then checked without touching a map.
        rate_exempt_ = p_.maps->find_cidr(policy::MapId::rate_exempt, p_.client).found();
    }
    if (over_rate(rates::LimitKind::connections, now)) {
        p_.metrics->connections[p_.listener_index][static_cast<int>(ConnResult::over_limit)].add();
        return;
    }
    p_.metrics->connections[p_.listener_index][static_cast<int>(ConnResult::accepted)].add();
    if (p_.greeting_delay.count() > 0) {
        state_ = State::greeting_delay;
        return;
    }
    state_ = State::command;
    reply(Reply::greeting, cfg_.server.hostname);
}

bool Session::wants_input() const {
    return state_ != State::closed && in_.size() < kMaxPendingInput;
}

void Session::receive(std::string_view bytes, Clock::time_point now) {
    if (state_ == State::closed || bytes.empty()) {
        return;
    }
    last_input_ = now;
    bytes_in_ += bytes.size();
    p_.metrics->bytes_received.add(bytes.size());
    if (state_ == State::greeting_delay) {
        // RFC 5321 §4.3.1: the client waits for the greeting. Talking first is what
        // spam engines do to save a round trip.
        reply(Reply::early_talker);
        close("early_talker");
        return;
    }
    if (in_.empty()) {
        // Fast path: parse straight from the read buffer, keep only the remainder.
        std::string_view view = bytes;
        process(view, now);
        if (state_ != State::closed && !view.empty()) {
            in_.assign(view);
        }
        return;
    }
    in_.append(bytes);
    std::string_view view = in_;
    process(view, now);
    in_.erase(0, in_.size() - view.size());
}

void Session::process(std::string_view& input, Clock::time_point now) {
    while (!input.empty() &&
           (state_ == State::command || state_ == State::data || state_ == State::auth_line)) {
        if (state_ == State::data) {
            auto r = data_->feed(input, body_);
            input.remove_prefix(r.consumed);
            if (r.status == DataReader::Status::need_more) {
                return;
            }
            if (r.status != DataReader::Status::done) {
                // SMTP smuggling defence: the message is discarded, never forwarded.
                p_.metrics->messages[static_cast<int>(MsgResult::rejected)].add();
                reply(Reply::bare_line_ending);
                close("bare_line_ending");
                return;
            }
            end_of_data(now);
            continue;
        }
        auto r = scanner_.next(input);
        switch (r.status) {
            case LineScanner::Status::need_more:
                input.remove_prefix(r.consumed);
                if (!input.empty() || scanner_.skipping()) {
                    if (!line_started_) {
                        line_started_ = now;
                    }
                }
                if (r.consumed == 0 || input.empty()) {
                    return;
                }
                continue;
            case LineScanner::Status::too_long:
                input.remove_prefix(r.consumed);
                line_started_ = now;
                reply(Reply::line_too_long);
                continue;
            case LineScanner::Status::bare_cr:
            case LineScanner::Status::bare_lf:
                reply(Reply::bare_line_ending);
                close("bare_line_ending");
                return;
            case LineScanner::Status::line:
                line_started_.reset();
                input.remove_prefix(r.consumed);
                if (state_ == State::auth_line) {
                    on_auth_line(r.line);
                    continue;
                }
                handle_line(r.line.empty() ? std::string_view{} : r.line, !input.empty(), now);
                if (state_ == State::starttls) {
                    // RFC 3207 §4.2, CVE-2011-0411: nothing sent before the handshake may
                    // be read as if it came through TLS.
                    if (!input.empty()) {
                        LogLine(Level::warn, "starttls_injection", p_.shard, p_.id)
                            .kv("client", format_ip(p_.client))
                            .kv("discarded", static_cast<std::uint64_t>(input.size()));
                    }
                    input = {};
                    return;
                }
                // `r.line` points into `input`'s storage, still valid here.
                continue;
        }
    }
}

void Session::handle_line(std::string_view line, bool more_input, Clock::time_point now) {
    Command c = parse_command(line);
    if (c.has_nul) {
        reply(Reply::invalid_character);
        return;
    }
    // RFC 2920 §3.1: EHLO, DATA, QUIT, NOOP, VRFY, EXPN, STARTTLS and AUTH end a group; the
    // client must wait for their reply. Without EHLO there is no pipelining at all.
    auto sync_check = [&] {
        if (more_input && state_ != State::closed) {
            reply(Reply::pipelining_not_advertised);
            close("pipelining_violation");
            return false;
        }
        return true;
    };
    if (!esmtp_ && more_input && c.verb != Verb::quit && c.verb != Verb::ehlo &&
        c.verb != Verb::helo) {
        reply(Reply::pipelining_not_advertised);
        close("pipelining_violation");
        return;
    }
    if (c.has_8bit && c.verb != Verb::mail && c.verb != Verb::rcpt) {
        reply(Reply::invalid_character);
        return;
    }
    if (p_.listener->tls == TlsMode::required && !tls_active_ &&
        (c.verb == Verb::mail || c.verb == Verb::rcpt || c.verb == Verb::data ||
         c.verb == Verb::vrfy || c.verb == Verb::expn)) {
        reply(Reply::tls_required);  // RFC 3207 §4
        return;
    }
    if (!count_junk(c.verb, now)) {
        return;
    }
    switch (c.verb) {
        case Verb::ehlo:
        case Verb::helo:
            on_ehlo(c, c.verb == Verb::ehlo);
            sync_check();
            return;
        case Verb::mail:
            on_mail(c);
            return;
        case Verb::rcpt:
            on_rcpt(c);
            return;
        case Verb::data:
            if (!c.arg.empty() || line.size() != 4) {
                reply(Reply::syntax_params);
                return;
            }
            on_data(now);
            sync_check();
            return;
        case Verb::rset:
            if (line.size() != 4) {
                reply(Reply::syntax_params);
                return;
            }
            reset_transaction();
            reply(Reply::ok);
            return;
        case Verb::noop:
            reply(Reply::ok);
            sync_check();
            return;
        case Verb::quit:
            reply(Reply::closing);
            close("quit");
            return;
        case Verb::vrfy:
            if (c.arg.empty()) {
                reply(Reply::syntax_params);
            } else {
                // RFC 5321 §3.5.3: 252 neither confirms nor denies (no address harvesting).
                reply(Reply::vrfy);
            }
            sync_check();
            return;
        case Verb::expn:
            reply(Reply::not_implemented);
            sync_check();
            return;
        case Verb::help:
            reply(Reply::help);
            return;
        case Verb::starttls:
            on_starttls(c);
            return;
        case Verb::auth:
            on_auth(c);
            return;
        case Verb::bdat:
            // Not advertised on this listener (RFC 3207 §4, RFC 4954 §4, RFC 3030 §2).
            reply(Reply::not_implemented);
            return;
        case Verb::unknown:
            reply(Reply::command_unrecognized);
            return;
    }
}

bool Session::count_junk(Verb verb, Clock::time_point now) {
    // Commands that keep a session open without moving a transaction on, as Postfix's
    // smtpd_junk_command_limit counts them: past the limit the client is only holding a
    // slot (RFC 5321 §4.5.3.2 lets a server close a session it considers abusive).
    bool junk = verb == Verb::noop || verb == Verb::rset || verb == Verb::help ||
                verb == Verb::vrfy ||
                ((verb == Verb::ehlo || verb == Verb::helo) && !helo_.empty());
    // A client that pauses (longer than the deadline) was idle, not trickling: the first
    // such pause since the last progress starts the run afresh; a second one does not, or a
    // command sent every deadline and a second would never be closed.
    if (junk_run_ != 0 && !pause_forgiven_ && now - last_command_ >= cfg_.limits.command_deadline) {
        pause_forgiven_ = true;
        junk_run_ = 0;
    }
    last_command_ = now;
    if (!junk) {
        // MAIL, RCPT and DATA do not end the run: a transaction that is then reset was no
        // progress, so MAIL and RSET in a loop is held to the command deadline like NOOPs.
        // Only a transaction that reaches the end of DATA ends it (finish_commit(),
        // end_of_data()).
        return true;
    }
    if (++junk_ > cfg_.limits.junk_commands) {
        reply(Reply::too_many_junk_commands);
        close("junk_commands");
        return false;
    }
    if (junk_run_++ == 0) {
        junk_since_ = now;
    }
    return true;
}

void Session::on_ehlo(const Command& c, bool extended) {
    std::string_view arg = c.arg;
    if (c.has_8bit || !valid_helo(arg)) {
        reply(Reply::syntax_helo, extended ? "EHLO" : "HELO");
        return;
    }
    // RFC 5321 §4.1.4: EHLO/HELO resets any transaction in progress.
    reset_transaction();
    helo_ = std::string(arg);
    esmtp_ = extended;
    if (!extended) {
        reply(Reply::helo, cfg_.server.hostname);
        return;
    }
    std::vector<std::string> lines;
    lines.push_back(cfg_.server.hostname);
    lines.push_back("PIPELINING");                                        // RFC 2920
    lines.push_back("SIZE " + std::to_string(cfg_.limits.message_size));  // RFC 1870
    lines.push_back("8BITMIME");                                          // RFC 6152
    lines.push_back("ENHANCEDSTATUSCODES");                               // RFC 2034
    lines.push_back("SMTPUTF8");                                          // RFC 6531
    if (p_.tls_available && !tls_active_) {
        lines.push_back("STARTTLS");  // RFC 3207
    }
    if (auth_offered()) {
        lines.push_back("AUTH " + std::string(sasl::kMechanisms));  // RFC 4954
    }
    append_multiline(out_, Reply::ehlo, lines);
}

void Session::on_mail(const Command& c) {
    if (helo_.empty()) {
        reply(Reply::need_helo);
        return;
    }
    if (tx_.sender) {
        reply(Reply::nested_mail);
        return;
    }
    if (draining_) {
        reply(Reply::shutting_down);
        close("shutdown");
        return;
    }
    if (p_.hooks->admission() != storage::CommitStatus::ok) {
        // The spool is (nearly) full: refuse now rather than after the client sent DATA.
        reply(Reply::insufficient_storage);
        return;
    }
    if (!c.syntax_ok || c.arg.empty() || c.arg.front() != '<') {
        reply(Reply::syntax_mail);
        return;
    }
    auto parsed = policy::parse_path(c.arg, true, true);
    std::vector<Param> params;
    if (parsed.error == policy::PathError::none &&
        !parse_params(c.arg.substr(parsed.consumed), params)) {
        reply(Reply::syntax_params);
        return;
    }
    if (!parsed.ok()) {
        reply(policy::path_error_reply(parsed.error, true));
        return;
    }
    Transaction tx;
    if (p_.listener->sender_login_match && !auth_user_.empty() &&
        !p_.hooks->sender_allowed(auth_user_, parsed.address.str())) {
        reply(Reply::sender_not_owned);  // a stolen password cannot send as anyone
        return;
    }
    for (const auto& prm : params) {
        if (prm.keyword == "SIZE" && prm.has_value && esmtp_) {
            std::uint64_t n = 0;
            auto [end, ec] =
                std::from_chars(prm.value.data(), prm.value.data() + prm.value.size(), n);
            if (ec == std::errc::result_out_of_range) {
                reply(Reply::size_exceeded);
                return;
            }
            if (ec != std::errc() || end != prm.value.data() + prm.value.size()) {
                reply(Reply::syntax_params);
                return;
            }
            if (n > cfg_.limits.message_size) {
                // RFC 1870 §6.2: a declared size over the fixed limit is a permanent 552.
                reply(Reply::size_exceeded);
                return;
            }
            tx.declared_size = n;
        } else if (prm.keyword == "BODY" && prm.has_value && esmtp_) {
            if (ascii::iequals(prm.value, "8BITMIME")) {
                tx.body_8bit = true;
            } else if (!ascii::iequals(prm.value, "7BIT")) {
                reply(Reply::unsupported_body);
                return;
            }
        } else if (prm.keyword == "SMTPUTF8" && !prm.has_value && esmtp_) {
            tx.smtputf8 = true;
        } else if (prm.keyword == "AUTH" && prm.has_value && esmtp_ && auth_offered()) {
            // RFC 4954 §5: the original submitter; we record our own login instead.
        } else {
            reply(Reply::unknown_parameter, prm.keyword);
            return;
        }
    }
    if ((c.has_8bit || parsed.address.utf8) && !tx.smtputf8) {
        reply(Reply::needs_smtputf8);  // RFC 6531 §3.4
        return;
    }
    if (over_rate(rates::LimitKind::messages, last_input_)) {
        return;
    }
    auto d = policy::decide_mail(facts(), parsed.address, p_.snapshot->rules, *p_.maps);
    if (d.verdict != policy::Verdict::accept) {
        log_decision("mail", d, angle(parsed.address.str()), {});
        reply_decision(d);
        return;
    }
    tx.sender = std::move(parsed.address);
    tx_ = std::move(tx);
    reply(Reply::sender_ok);
}

void Session::on_rcpt(const Command& c) {
    if (!tx_.sender) {
        reply(helo_.empty() ? Reply::need_helo : Reply::need_mail);
        return;
    }
    if (!c.syntax_ok || c.arg.empty() || c.arg.front() != '<') {
        reply(Reply::syntax_rcpt);
        return;
    }
    if (++tx_.rcpt_attempts > cfg_.limits.recipients * kMaxRcptAttemptsFactor) {
        reply(Reply::too_many_errors);
        close("too_many_recipients");
        return;
    }
    if (tx_.recipients.size() >= cfg_.limits.recipients) {
        // RFC 5321 §4.5.3.1.10: 452 so the client sends the rest in another transaction.
        reply(Reply::too_many_recipients);
        return;
    }
    auto parsed = policy::parse_path(c.arg, false, tx_.smtputf8);
    if (!parsed.ok()) {
        if (parsed.error == policy::PathError::syntax) {
            if (auto d = policy::unparsable_routing(c.arg)) {
                auto close = c.arg.find('>');
                log_decision(
                    "rcpt", *d, angle(tx_.sender->str()),
                    c.arg.substr(0, close == std::string_view::npos ? c.arg.size() : close + 1));
                reply_decision(*d);
                return;
            }
        }
        reply(policy::path_error_reply(parsed.error, false));
        return;
    }
    std::vector<Param> params;
    if (!parse_params(c.arg.substr(parsed.consumed), params)) {
        reply(Reply::syntax_params);
        return;
    }
    if (!params.empty()) {
        reply(Reply::unknown_parameter, params.front().keyword);
        return;
    }
    if (over_rate(rates::LimitKind::recipients, last_input_)) {
        return;
    }
    const auto& rcpt = parsed.address;
    auto d = policy::decide_rcpt(facts(), *tx_.sender, rcpt, p_.snapshot->rules, *p_.maps);
    std::string from = angle(tx_.sender->str());
    std::string to = angle(rcpt.str());
    if (d.verdict == policy::Verdict::accept) {
        std::string deliver_to = d.deliver_to.empty() ? rcpt.str() : d.deliver_to;
        auto at = deliver_to.rfind('@');
        std::string domain = at == std::string::npos ? std::string() : deliver_to.substr(at + 1);
        if (rcpt.postmaster_only && domain.empty()) {
            domain = cfg_.domains.local.empty() ? std::string() : cfg_.domains.local.front();
        }
        const Route* route = cfg_.route_for(domain);
        if (route == nullptr || !p_.hooks->transport_available(route->transport)) {
            // Accepting mail we cannot deliver would lose it: fail closed (T140).
            policy::Decision t;
            t.verdict = policy::Verdict::defer;
            t.code = policy::Code::T140;
            t.reply = Reply::lookup_failed;
            t.rule = route ? "routes." + route->domain : "routes";
            t.source = route ? route->where.str() : cfg_.path;
            t.reason = route ? "transport " + route->transport.text + " not available"
                             : "no route for domain " + domain;
            log_decision("rcpt", t, from, to);
            reply_decision(t);
            return;
        }
        storage::Recipient r;
        r.address = rcpt.str();
        r.deliver_to = deliver_to;
        r.code = std::string(policy::code_name(d.code));
        r.transport = route->transport;
        tx_.recipients.push_back(std::move(r));
        ++recipients_;
    }
    log_decision("rcpt", d, from, to);
    reply_decision(d);
}

void Session::on_data(Clock::time_point now) {
    if (!tx_.sender) {
        reply(helo_.empty() ? Reply::need_helo : Reply::need_mail);
        return;
    }
    if (tx_.recipients.empty()) {
        reply(Reply::no_valid_recipients);  // RFC 5321 §3.3
        return;
    }
    data_.emplace(cfg_.limits.message_size);
    // The message is built in place: our Received: field first, the content appended
    // behind it as it arrives, so that a 25 MB message is never copied to prepend it.
    pending_id_ = new_message_id(p_.shard);
    std::string header = received_header();
    header.replace(header.find("%ID%"), 4, pending_id_);
    body_.clear();
    body_.reserve(header.size() +
                  std::min<std::uint64_t>(tx_.declared_size ? tx_.declared_size + 512 : 4096,
                                          cfg_.limits.message_size + 2));
    body_.append(header);  // into the reserved buffer (assigning would drop it)
    content_start_ = body_.size();
    data_started_ = now;
    state_ = State::data;
    reply(Reply::start_data);
}

std::string Session::received_header() const {
    // RFC 5321 §4.4 time stamp line; protocol names of RFC 3848 and RFC 6531 §3.7.3.
    std::string proto = tx_.smtputf8 ? "UTF8SMTP" : esmtp_ ? "ESMTP" : "SMTP";
    if (esmtp_ && tls_active_) {
        proto += "S";
    }
    if (esmtp_ && !auth_user_.empty()) {
        proto += "A";
    }
    std::string ip = format_ip(p_.client);
    std::string h = "Received: from " + helo_ + " (" +
                    (p_.client.v4 ? "[" + ip + "]" : "[IPv6:" + ip + "]") + ")\r\n\t" +
                    (auth_user_.empty() ? "" : "(authenticated as " + auth_user_ + ")\r\n\t") +
                    "by " + cfg_.server.hostname + " (Sluice) with " + proto + " id " + "%ID%";
    if (tls_active_) {
        h += "\r\n\t(" + tls_version_ + " " + tls_cipher_ + ")";
    }
    if (tx_.recipients.size() == 1) {
        h += "\r\n\tfor <" + tx_.recipients.front().address + ">";
    }
    h += "; " + rfc5322_date(std::chrono::system_clock::now()) + "\r\n";
    return h;
}

void Session::end_of_data(Clock::time_point now) {
    auto done = [&](Reply r, std::string_view why) {
        p_.metrics->messages[static_cast<int>(MsgResult::rejected)].add();
        LogLine(Level::info, "reject", p_.shard, p_.id)
            .kv("client", format_ip(p_.client))
            .kv("from", angle(tx_.sender->str()))
            .kv("size", data_->size())
            .kv("reason", why)
            .kv("reply", reply_line(r));
        state_ = State::command;
        junk_run_ = 0;  // a transaction came to its end: progress, as in finish_commit()
        pause_forgiven_ = false;
        reply(r);
        reset_transaction();
        if (draining_) {
            // The message in flight has had its answer: the drain goes on as for one that
            // was accepted (finish_commit()).
            reply(Reply::shutting_down);
            close("shutdown");
        }
    };
    if (data_->oversized()) {
        return done(Reply::size_exceeded, "size");
    }
    if (data_->has_nul()) {
        return done(Reply::nul_in_message, "nul");
    }
    if (data_->long_line()) {
        return done(Reply::line_too_long, "line_length");
    }
    if (count_hops(std::string_view(body_).substr(content_start_)) >= cfg_.limits.max_hops) {
        return done(Reply::too_many_hops, "hops");
    }
    auto msg = std::make_unique<storage::Message>();
    msg->id = pending_id_;
    msg->data = std::move(body_);  // our Received: field and the content (see on_data)
    body_ = std::string();
    msg->sender = tx_.sender->str();
    msg->recipients = std::move(tx_.recipients);
    msg->client = format_ip(p_.client);
    msg->helo = helo_;
    msg->listener = p_.listener->name;
    msg->auth_user = auth_user_;
    msg->received_at = std::chrono::system_clock::now();
    data_.reset();
    state_ = State::committing;
    (void)now;
    p_.hooks->commit(std::move(msg));
}

void Session::commit_done(storage::CommitStatus status, Clock::time_point now) {
    if (status == storage::CommitStatus::ok) {
        // The id was logged by the storage side with event=queued.
        finish_commit(MsgResult::accepted, Reply::queued, pending_id_, now);
    } else {
        finish_commit(MsgResult::failed,
                      status == storage::CommitStatus::no_space ? Reply::insufficient_storage
                                                                : Reply::local_error,
                      {}, now);
    }
}

void Session::commit_refused(Reply r, std::string_view detail, Clock::time_point now) {
    finish_commit(r == Reply::inline_refused ? MsgResult::rejected : MsgResult::failed, r, detail,
                  now);
}

void Session::finish_commit(MsgResult result, Reply r, std::string_view arg,
                            Clock::time_point now) {
    if (state_ != State::committing) {
        return;
    }
    state_ = State::command;
    last_input_ = now;
    if (result == MsgResult::accepted) {
        ++messages_;
        junk_ = 0;  // a message accepted forgives them, as in Postfix's smtpd
    }
    junk_run_ = 0;  // a transaction came to its end: progress
    pause_forgiven_ = false;
    p_.metrics->messages[static_cast<int>(result)].add();
    reply(r, arg);
    reset_transaction();
    if (draining_) {
        reply(Reply::shutting_down);
        close("shutdown");
        return;
    }
    if (!in_.empty()) {
        std::string_view view = in_;
        process(view, now);
        in_.erase(0, in_.size() - view.size());
    }
}

void Session::tick(Clock::time_point now) {
    using std::chrono::duration_cast;
    switch (state_) {
        case State::tarpit:
            if (now >= tarpit_until_) {
                append_reply(out_, tarpit_reply_, tarpit_arg_);
                if (reply_spec(tarpit_reply_).closes || draining_) {
                    if (!reply_spec(tarpit_reply_).closes) {
                        append_reply(out_, Reply::shutting_down);
                    }
                    close("rate_limited");
                    return;
                }
                state_ = tarpit_resume_ == State::greeting_delay ? State::command : tarpit_resume_;
                last_input_ = now;  // the wait was ours: the idle timeout starts again
                if (!in_.empty()) {
                    std::string_view view = in_;
                    process(view, now);
                    in_.erase(0, in_.size() - view.size());
                }
            }
            return;
        case State::greeting_delay:
            if (now - started_ >= p_.greeting_delay) {
                state_ = State::command;
                reply(Reply::greeting, cfg_.server.hostname);
            }
            return;
        case State::command:
            // A run of junk commands (and the MAIL, RCPT and DATA between them) since the
            // last transaction that reached the end of DATA is held to the deadline of one
            // command line, so a client trickling NOOPs, or MAIL and RSET, is closed like
            // one trickling bytes; a single RSET or NOOP followed by silence is only idle
            // (command_timeout).
            if (now - last_input_ >= cfg_.limits.command_timeout ||
                (line_started_ && now - *line_started_ >= cfg_.limits.command_deadline) ||
                (junk_run_ >= 2 && now - junk_since_ >= cfg_.limits.command_deadline)) {
                reply(Reply::timeout);
                close("timeout");
            }
            return;
        case State::data: {
            auto elapsed = now - data_started_;
            auto secs = duration_cast<std::chrono::milliseconds>(elapsed).count() / 1000.0;
            // RFC 5321 §4.5.3.2.5/6: 3 minutes between blocks, 10 minutes overall; plus a
            // minimum average rate so a byte-a-second client cannot hold a slot for long.
            // The rate is judged once DATA has lasted a whole command deadline.
            bool slow = elapsed >= cfg_.limits.command_deadline && cfg_.limits.min_data_rate > 0 &&
                        static_cast<double>(data_->size()) / secs <
                            static_cast<double>(cfg_.limits.min_data_rate);
            if (elapsed >= cfg_.limits.data_timeout ||
                now - last_input_ >= cfg_.limits.command_timeout || slow) {
                reply(Reply::timeout);
                close(slow ? "data_rate" : "data_timeout");
            }
            return;
        }
        case State::starttls:
        case State::auth_line:
            if (now - last_input_ >= cfg_.limits.command_timeout) {
                reply(Reply::timeout);
                close("timeout");
            }
            return;
        case State::committing:
        case State::authenticating:
        case State::closed:
            return;
    }
}

void Session::shutdown() {
    draining_ = true;
    if (state_ == State::command || state_ == State::greeting_delay || state_ == State::auth_line ||
        state_ == State::starttls) {
        reply(Reply::shutting_down);
        close("shutdown");
    }
}

void Session::peer_closed(std::string_view why) {
    if (state_ != State::closed) {
        close(why);
    }
}

bool Session::auth_offered() const {
    // RFC 4954 §4 and the seeds: AUTH on submission listeners only, and only under TLS
    // unless the listener explicitly allows plaintext (config: loopback addresses only).
    return p_.listener->role == Role::submission && (tls_active_ || p_.listener->auth_without_tls);
}

void Session::on_starttls(const Command& c) {
    if (tls_active_) {
        reply(Reply::tls_already_active);
        return;
    }
    if (!p_.tls_available) {
        reply(Reply::not_implemented);  // not advertised (RFC 3207 §4)
        return;
    }
    if (!c.arg.empty()) {
        reply(Reply::syntax_params);
        return;
    }
    reply(Reply::starttls_ready);
    state_ = State::starttls;
}

void Session::tls_started(std::string_view version, std::string_view cipher) {
    if (state_ != State::starttls && !(tls_active_ && state_ == State::command)) {
        return;
    }
    // RFC 3207 §4.2: forget everything learned before TLS, the client starts over with EHLO.
    reset_transaction();
    helo_.clear();
    esmtp_ = false;
    auth_user_.clear();
    tls_active_ = true;
    tls_version_ = std::string(version);
    tls_cipher_ = std::string(cipher);
    if (state_ == State::starttls) {
        state_ = State::command;
    }
}

void Session::on_auth(const Command& c) {
    if (!auth_offered()) {
        if (p_.listener->role == Role::submission && !tls_active_) {
            reply(Reply::auth_needs_tls);  // RFC 4954 §4: 538 5.7.11
        } else {
            reply(Reply::not_implemented);
        }
        return;
    }
    if (helo_.empty() || !esmtp_) {
        reply(Reply::need_helo);
        return;
    }
    if (!auth_user_.empty() || tx_.sender) {
        reply(Reply::auth_in_transaction);  // RFC 4954 §4: 503 5.5.1
        return;
    }
    auth_step(sasl_.start(c.arg));
}

void Session::on_auth_line(std::string_view line) {
    auth_step(sasl_.respond(line));
}

void Session::auth_step(const sasl::Step& step) {
    switch (step.kind) {
        case sasl::Step::Kind::challenge:
            state_ = State::auth_line;
            reply(Reply::auth_challenge, step.challenge);
            return;
        case sasl::Step::Kind::error:
            state_ = State::command;
            p_.metrics->auth[static_cast<int>(AuthResult::aborted)].add();
            LogLine(Level::info, "auth", p_.shard, p_.id)
                .kv("client", format_ip(p_.client))
                .kv("result", "aborted")
                .kv("reason", step.reason);
            reply(step.reply);
            return;
        case sasl::Step::Kind::done:
            state_ = State::authenticating;
            auth_pending_user_ = step.credentials.user;
            p_.hooks->authenticate(step.credentials);
            return;
    }
}

void Session::auth_done(AuthOutcome outcome, Clock::time_point now) {
    if (state_ != State::authenticating) {
        return;
    }
    state_ = State::command;
    last_input_ = now;
    const char* result = outcome == AuthOutcome::ok          ? "ok"
                         : outcome == AuthOutcome::throttled ? "throttled"
                         : outcome == AuthOutcome::failed    ? "failed"
                                                             : "unavailable";
    p_.metrics
        ->auth[static_cast<int>(outcome == AuthOutcome::ok ? AuthResult::ok : AuthResult::failed)]
        .add();
    LogLine(Level::info, "auth", p_.shard, p_.id)
        .kv("client", format_ip(p_.client))
        .kv("user", auth_pending_user_)
        .kv("result", result);
    switch (outcome) {
        case AuthOutcome::ok:
            auth_user_ = auth_pending_user_;
            reply(Reply::auth_ok);
            break;
        case AuthOutcome::failed:
            reply(Reply::auth_failed);
            break;
        case AuthOutcome::throttled:
            reply(Reply::auth_throttled);
            close("auth_throttled");
            break;
        case AuthOutcome::unavailable:
            reply(Reply::auth_unavailable);
            break;
    }
    auth_pending_user_.clear();
    if (state_ == State::command && !in_.empty()) {
        std::string_view view = in_;
        process(view, now);
        in_.erase(0, in_.size() - view.size());
    }
}

void Session::reset_transaction() {
    tx_ = Transaction{};
    data_.reset();
    body_.clear();
}

void Session::reply(Reply r, std::string_view arg, std::string_view text) {
    append_reply(out_, r, arg, text);
    const auto& spec = reply_spec(r);
    if (spec.code >= 400 && !spec.closes && r != Reply::too_many_recipients) {
        if (++errors_ >= cfg_.limits.max_errors) {
            append_reply(out_, Reply::too_many_errors);
            close("too_many_errors");
            return;
        }
        // A rate refusal is not counted again as an error of the client's.
        if (r != Reply::rate_messages && r != Reply::rate_recipients) {
            over_rate(rates::LimitKind::errors, last_input_);
        }
    }
}

static_assert(rates::kLimitKinds == 4 && rates::kKeyKinds == 2,
              "ShardMetrics::rate_limited is indexed by LimitKind and KeyKind");

bool Session::over_rate(rates::LimitKind kind, Clock::time_point now) {
    if (p_.rates == nullptr || rate_exempt_ || state_ == State::closed) {
        return false;
    }
    const auto settings = rates::Settings::from_config(cfg_);
    const auto now_us =
        std::chrono::duration_cast<std::chrono::microseconds>(now.time_since_epoch()).count();
    auto t = rates::check(*p_.rates, settings, kind, p_.client, now_us);
    if (!t) {
        return false;
    }
    static constexpr struct {
        policy::Code code;
        Reply reply;
    } kActions[rates::kLimitKinds] = {
        {policy::Code::R150, Reply::rate_connections},
        {policy::Code::R151, Reply::rate_messages},
        {policy::Code::R152, Reply::rate_recipients},
        {policy::Code::R153, Reply::rate_errors},
    };
    const auto& action = kActions[static_cast<std::size_t>(kind)];
    p_.metrics->decisions[static_cast<std::size_t>(action.code)].add();
    p_.metrics->rate_limited[static_cast<std::size_t>(kind)][static_cast<std::size_t>(t->key_kind)]
        .add();
    std::string arg = t->key_kind == rates::KeyKind::client ? "your address" : "your network";
    LogLine line(Level::info, "rate_limited", p_.shard, p_.id);
    line.kv("code", policy::code_name(action.code)).kv("client", format_ip(p_.client));
    if (p_.proxy) {
        line.kv("proxy", format_ip(*p_.proxy));
    }
    line.kv("limit", rates::limit_name(kind))
        .kv("key_kind", rates::key_kind_name(t->key_kind))
        .kv("key", rates::key_text(p_.client, t->key_kind))
        .kv("count", t->count)
        .kv("interval_ms", static_cast<std::uint64_t>(cfg_.rates.interval.count()))
        .kv("retry_after_ms", static_cast<std::uint64_t>(t->verdict.retry_after / 1000))
        .kv("action", cfg_.rates.tarpit ? "tarpit" : "refuse")
        .kv("listener", p_.listener->name)
        .kv("reply", reply_line(action.reply, arg));
    if (cfg_.rates.tarpit) {
        // The refusal waits on the shard's tick (daemon/shard.cpp), not in a sleep: the
        // loop keeps serving every other session meanwhile.
        tarpit_reply_ = action.reply;
        tarpit_arg_ = std::move(arg);
        tarpit_until_ = now + cfg_.rates.tarpit_delay;
        tarpit_resume_ = state_;
        state_ = State::tarpit;
        return true;
    }
    append_reply(out_, action.reply, arg);
    if (reply_spec(action.reply).closes) {
        close("rate_limited");
    }
    return true;
}

void Session::reply_decision(const policy::Decision& d) {
    reply(d.reply, {}, d.reply_text);
}

void Session::log_decision(std::string_view event, const policy::Decision& d, std::string_view from,
                           std::string_view to) {
    auto code = static_cast<std::size_t>(d.code);
    if (code < kDecisionCodes) {
        p_.metrics->decisions[code].add();
    }
    LogLine line(Level::info, event, p_.shard, p_.id);
    line.kv("code", policy::code_name(d.code)).kv("client", format_ip(p_.client));
    if (p_.proxy) {
        line.kv("proxy", format_ip(*p_.proxy));
    }
    if (!helo_.empty()) {
        line.kv("helo", helo_);
    }
    if (!from.empty()) {
        line.kv("from", from);
    }
    if (!to.empty()) {
        line.kv("to", to);
    }
    if (!auth_user_.empty()) {
        line.kv("user", auth_user_);  // the principal (G108, and log-report's grants by user)
    }
    line.kv("listener", p_.listener->name).kv("gen", p_.snapshot->generation);
    if (!d.rule.empty()) {
        line.kv("rule", d.rule);
    }
    if (!d.source.empty()) {
        line.kv("source", d.source);
    }
    line.kv("reply", reply_line(d.reply, {}, d.reply_text));
}

void Session::close(std::string_view why) {
    if (state_ == State::closed) {
        return;
    }
    state_ = State::closed;
    close_reason_ = std::string(why);
    in_.clear();
    auto secs = std::chrono::duration<double>(Clock::now() - started_).count();
    p_.metrics->observe_duration(secs);
    LogLine line(Level::info, "session", p_.shard, p_.id);
    line.kv("client", format_ip(p_.client));
    if (p_.proxy) {
        line.kv("proxy", format_ip(*p_.proxy));  // the load balancer it came through
    }
    line.kv("listener", p_.listener->name)
        .kv("helo", helo_)
        .kv("msgs", messages_)
        .kv("rcpts", recipients_)
        .kv("bytes", bytes_in_)
        .kv("errors", errors_)
        .kv("duration_ms", static_cast<std::uint64_t>(secs * 1000))
        .kv("result", close_reason_);
}

}  // namespace sluice::smtp
