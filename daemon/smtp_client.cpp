#include "daemon/smtp_client.hpp"

#include <algorithm>
#include <cstring>
#include <utility>

#include "common/ascii.hpp"

namespace sluice::smtp {
namespace {

using Kind = RecipientResult::Kind;

bool is_digit(char c) {
    return c >= '0' && c <= '9';
}

// RFC 3463 §2: class "." subject "." detail, 1-3 digits each, class 2, 4 or 5 and (RFC
// 2034 §4) the same class as the basic code. Returns the length of the code or 0.
std::size_t enhanced_length(std::string_view text, int code) {
    if (text.size() < 5 || (text[0] != '2' && text[0] != '4' && text[0] != '5')) {
        return 0;
    }
    int cls = code / 100 == 3 ? 2 : code / 100;
    if (text[0] - '0' != cls || text[1] != '.') {
        return 0;
    }
    std::size_t i = 2;
    for (int part = 0; part < 2; ++part) {
        std::size_t start = i;
        while (i < text.size() && is_digit(text[i]) && i - start < 4) {
            ++i;
        }
        if (i == start || i - start > 3) {
            return 0;
        }
        if (part == 0) {
            if (i >= text.size() || text[i] != '.') {
                return 0;
            }
            ++i;
        }
    }
    if (i < text.size() && text[i] != ' ') {
        return 0;
    }
    return i;
}

// Reply texts end up in logs and DSNs: control characters become spaces.
std::string clean_text(std::string_view s) {
    return ascii::printable(s, ' ');
}

bool has_control(std::string_view s) {
    return std::any_of(s.begin(), s.end(), [](char c) {
        auto u = static_cast<unsigned char>(c);
        return u < 0x20 || u == 0x7f;
    });
}

bool has_8bit(std::string_view s) {
    // Branch-free accumulation lets the compiler vectorise this over a 25 MB message.
    unsigned char acc = 0;
    for (char c : s) {
        acc |= static_cast<unsigned char>(c);
    }
    return (acc & 0x80) != 0;
}

RecipientResult local_result(Reply row, std::string text = {}) {
    const auto& spec = reply_spec(row);
    RecipientResult r;
    r.code = spec.code;
    r.enhanced = std::string(spec.enhanced);
    r.text = text.empty() ? std::string(spec.text) : std::move(text);
    r.kind = spec.code / 100 == 2   ? Kind::delivered
             : spec.code / 100 == 4 ? Kind::deferred
                                    : Kind::failed;
    return r;
}

std::string reply_summary(const ServerReply& r) {
    std::string s = std::to_string(r.code);
    if (!r.enhanced.empty()) {
        s += ' ';
        s += r.enhanced;
    }
    std::string t = r.text();
    if (!t.empty()) {
        s += ' ';
        s += t;
    }
    return s;
}

// A reply of class 2, 4 or 5 as a result. `session_level`: a 5xx is turned into a
// deferral (see the header comment). Other classes where a final answer was due are a
// protocol error.
RecipientResult reply_result(const ServerReply& r, std::string_view cmd, bool session_level) {
    int cls = r.code / 100;
    if (cls != 2 && cls != 4 && cls != 5) {
        return local_result(Reply::next_hop_protocol,
                            "Unexpected reply to " + std::string(cmd) + ": " + reply_summary(r));
    }
    RecipientResult res;
    res.code = r.code;
    res.enhanced = r.enhanced;
    res.text = r.text();
    res.reply = reply_summary(r);
    res.in_reply_to = cmd;
    if (session_level && cls == 5) {
        res.code -= 100;
        if (!res.enhanced.empty()) {
            res.enhanced[0] = '4';
        }
        cls = 4;
    }
    if (res.enhanced.empty()) {
        res.enhanced = std::to_string(cls) + ".0.0";
    }
    res.kind = cls == 2 ? Kind::delivered : cls == 4 ? Kind::deferred : Kind::failed;
    return res;
}

}  // namespace

// ---------------------------------------------------------------------------------------
// ServerReply / ReplyReader

std::string ServerReply::text() const {
    std::string s;
    for (const auto& l : lines) {
        if (l.empty()) {
            continue;
        }
        if (!s.empty()) {
            s += ' ';
        }
        s += l;
    }
    return s;
}

void ReplyReader::clear() {
    buf_.clear();
    pos_ = 0;
    cur_ = ServerReply{};
    in_reply_ = false;
}

ReplyReader::Status ReplyReader::next(ServerReply& out) {
    if (error_) {
        return Status::error;
    }
    for (;;) {
        std::size_t nl = buf_.find('\n', pos_);
        if (nl == std::string::npos) {
            if (buf_.size() - pos_ > client_limits::reply_line) {
                error_ = true;
                return Status::error;
            }
            buf_.erase(0, pos_);
            pos_ = 0;
            return Status::partial;
        }
        std::string_view line(buf_.data() + pos_, nl - pos_);
        pos_ = nl + 1;
        if (!line.empty() && line.back() == '\r') {
            line.remove_suffix(1);
        }
        // RFC 5321 §4.2: Reply-code = %x32-35 %x30-35 %x30-39; we accept any digits of
        // class 1-5 and let the state machine judge the class.
        if (line.size() > client_limits::reply_line || line.size() < 3 || line[0] < '1' ||
            line[0] > '5' || !is_digit(line[1]) || !is_digit(line[2])) {
            error_ = true;
            return Status::error;
        }
        int code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
        char sep = line.size() > 3 ? line[3] : ' ';
        if (sep != ' ' && sep != '-') {
            error_ = true;
            return Status::error;
        }
        std::string_view text = line.size() > 4 ? line.substr(4) : std::string_view{};
        if (!in_reply_) {
            cur_ = ServerReply{};
            cur_.code = code;
            in_reply_ = true;
        } else if (code != cur_.code || cur_.lines.size() >= client_limits::reply_lines) {
            error_ = true;
            return Status::error;
        }
        if (cur_.lines.empty()) {
            std::size_t n = enhanced_length(text, code);
            if (n > 0) {
                cur_.enhanced = std::string(text.substr(0, n));
                text.remove_prefix(std::min(n + 1, text.size()));
            }
        } else if (!cur_.enhanced.empty() &&
                   text.substr(0, cur_.enhanced.size()) == cur_.enhanced &&
                   (text.size() == cur_.enhanced.size() || text[cur_.enhanced.size()] == ' ')) {
            // RFC 2034 §4: every line of a multi-line reply repeats the code.
            text.remove_prefix(std::min(cur_.enhanced.size() + 1, text.size()));
        }
        cur_.lines.push_back(clean_text(text));
        if (sep == ' ') {
            in_reply_ = false;
            out = std::move(cur_);
            cur_ = ServerReply{};
            if (pos_ == buf_.size()) {
                buf_.clear();
                pos_ = 0;
            }
            return Status::reply;
        }
    }
}

// ---------------------------------------------------------------------------------------
// DotStuffer

void DotStuffer::feed(std::string_view piece, std::string& out) {
    const char* p = piece.data();
    const std::size_t n = piece.size();
    out.reserve(out.size() + n + n / 64 + 16);
    std::size_t i = 0;
    while (i < n) {
        if (pending_cr_) {
            // A CR was the last byte seen: CRLF, or a bare CR that we end as CRLF.
            pending_cr_ = false;
            out.push_back('\n');
            line_start_ = true;
            if (p[i] == '\n') {
                ++i;
                continue;
            }
        }
        if (line_start_) {
            line_start_ = false;
            if (p[i] == '.') {
                out.push_back('.');  // RFC 5321 §4.5.2: double a leading period
            }
        }
        // The next CR or LF: memchr twice keeps the common clean-line case vectorised.
        const void* lf = std::memchr(p + i, '\n', n - i);
        std::size_t end =
            lf != nullptr ? static_cast<std::size_t>(static_cast<const char*>(lf) - p) : n;
        const void* cr = std::memchr(p + i, '\r', end - i);
        std::size_t j =
            cr != nullptr ? static_cast<std::size_t>(static_cast<const char*>(cr) - p) : end;
        out.append(p + i, j - i);
        if (j == n) {
            break;
        }
        if (p[j] == '\r') {
            out.push_back('\r');
            pending_cr_ = true;
        } else {
            out.append("\r\n");  // a bare LF is sent as CRLF
            line_start_ = true;
        }
        i = j + 1;
    }
}

void DotStuffer::finish(std::string& out) {
    if (pending_cr_) {
        out.push_back('\n');
        pending_cr_ = false;
        line_start_ = true;
    }
    if (!line_start_) {
        out.append("\r\n");  // the data must end with CRLF before "." (RFC 5321 §4.1.1.4)
    }
    out.append(".\r\n");
    line_start_ = true;
}

// ---------------------------------------------------------------------------------------
// RecipientResult

std::string RecipientResult::diagnostic() const {
    return reply.empty() ? std::string{} : "smtp; " + reply;
}

std::string_view to_string(RecipientResult::Kind k) {
    switch (k) {
        case Kind::delivered:
            return "delivered";
        case Kind::deferred:
            return "deferred";
        case Kind::failed:
            return "failed";
    }
    return "?";
}

std::string_view to_string(Client::State s) {
    using S = Client::State;
    switch (s) {
        case S::connecting:
            return "connecting";
        case S::greeting:
            return "greeting";
        case S::ehlo:
            return "ehlo";
        case S::helo:
            return "helo";
        case S::starttls:
            return "starttls";
        case S::tls_handshake:
            return "tls_handshake";
        case S::ready:
            return "ready";
        case S::resetting:
            return "resetting";
        case S::mail:
            return "mail";
        case S::rcpt:
            return "rcpt";
        case S::data:
            return "data";
        case S::sending:
            return "sending";
        case S::data_end:
            return "data_end";
        case S::quitting:
            return "quitting";
        case S::closed:
            return "closed";
        case S::failed:
            return "failed";
    }
    return "?";
}

// ---------------------------------------------------------------------------------------
// Client: events from the owner

Client::Client(Options o) : opt_(std::move(o)) {
    if (opt_.helo.empty()) {
        opt_.helo = "localhost";
    }
    if (opt_.chunk == 0) {
        opt_.chunk = client_limits::chunk;
    }
}

void Client::connected() {
    if (state_ != State::connecting) {
        return;
    }
    expects_.push_back({Cmd::greeting});
    sync_state();
}

void Client::receive(std::string_view bytes) {
    if (state_ == State::connecting) {
        connected();
    }
    if (finished() || state_ == State::tls_handshake) {
        return;  // nothing to say any more, or plaintext injected after STARTTLS's 220
    }
    reader_.append(bytes);
    ServerReply r;
    for (;;) {
        auto st = reader_.next(r);
        if (st == ReplyReader::Status::partial) {
            return;
        }
        if (st == ReplyReader::Status::error) {
            abort_all(local_result(
                Reply::next_hop_protocol,
                "Malformed reply from the next hop in state " + std::string(to_string(state_))));
            drop(State::failed, "malformed reply");
            return;
        }
        on_reply(r);
        if (finished() || state_ == State::tls_handshake) {
            // After 220 to STARTTLS anything already buffered was sent in plaintext by
            // someone else (RFC 3207 §4.2, CVE-2011-0411): drop it.
            reader_.clear();
            return;
        }
    }
}

bool Client::send_message(const OutboundMessage& m) {
    if (m.recipients.empty() || queued_ || quit_requested_) {
        return false;
    }
    if (can_pipeline()) {
        start_transaction(m);
        sync_state();
        return true;
    }
    if (!txs_.empty()) {
        return false;
    }
    switch (state_) {
        case State::connecting:
        case State::greeting:
        case State::ehlo:
        case State::helo:
        case State::starttls:
        case State::tls_handshake:
        case State::resetting:
            queued_ = m;
            return true;
        case State::ready:
            start_transaction(m);
            sync_state();
            return true;
        default:
            return false;
    }
}

void Client::quit() {
    if (finished() || quit_requested_) {
        return;
    }
    quit_requested_ = true;
    if (state_ == State::ready) {
        send_quit();
        sync_state();
    } else if (state_ == State::connecting && !queued_) {
        drop(State::closed, "quit before connecting");
    }
    // Otherwise idle() sends QUIT once the current and queued transactions are done.
}

void Client::connection_lost() {
    if (finished()) {
        return;
    }
    if (state_ == State::quitting) {
        drop(State::closed, "closed after QUIT");
        return;
    }
    abort_all(
        local_result(Reply::next_hop_lost, std::string(reply_spec(Reply::next_hop_lost).text) +
                                               " (" + std::string(to_string(state_)) + ")"));
    drop(State::failed, "connection lost in state " + std::string(to_string(state_)));
}

void Client::timed_out() {
    switch (state_) {
        case State::closed:
        case State::failed:
            return;
        case State::ready:
            // The idle time for a cached connection is over: leave politely.
            quit();
            return;
        case State::quitting:
            drop(State::closed, "timeout waiting for the reply to QUIT");
            return;
        default:
            break;
    }
    abort_all(local_result(Reply::next_hop_timeout,
                           std::string(reply_spec(Reply::next_hop_timeout).text) + " (" +
                               std::string(to_string(state_)) + ")"));
    drop(State::failed, "timeout in state " + std::string(to_string(state_)));
}

void Client::tls_established() {
    if (state_ != State::tls_handshake) {
        return;
    }
    // RFC 3207 §4.2: forget everything learnt before TLS and start over with EHLO.
    tls_active_ = true;
    extensions_.clear();
    size_limit_ = 0;
    pipelining_ = false;
    reader_.clear();
    state_ = State::ehlo;
    send_command("EHLO " + opt_.helo, Cmd::ehlo);
    sync_state();
}

std::string Client::take_output() {
    std::string s;
    s.swap(out_);
    return s;
}

void Client::output_drained() {
    if (state_ == State::sending) {
        fill_output();
    }
}

std::vector<RecipientResult> Client::take_results() {
    if (done_.empty()) {
        return {};
    }
    auto r = std::move(done_.front());
    done_.pop_front();
    return r;
}

bool Client::reusable() const {
    return (state_ == State::ready || state_ == State::resetting) && txs_.empty() && !queued_ &&
           !quit_requested_;
}

bool Client::can_pipeline() const {
    return pipelining_ && state_ == State::data_end && !quit_requested_ && !queued_ &&
           txs_.size() == 1 && txs_.front().sent_all && !txs_.front().finished;
}

Millis Client::current_timeout() const {
    const auto& t = opt_.timeouts;
    switch (state_) {
        case State::connecting:
            return t.connect;
        case State::greeting:
            return t.greeting;
        case State::ehlo:
        case State::helo:
        case State::starttls:
        case State::tls_handshake:
        case State::resetting:
        case State::quitting:
            return t.command;
        case State::ready:
            return t.idle;
        case State::mail:
            return t.mail;
        case State::rcpt:
            return t.rcpt;
        case State::data:
            return t.data_init;
        case State::sending:
            return t.data_block;
        case State::data_end:
            return t.data_term;
        case State::closed:
        case State::failed:
            return Millis(0);
    }
    return Millis(0);
}

bool Client::server_supports(std::string_view ext) const {
    return std::any_of(extensions_.begin(), extensions_.end(),
                       [&](const std::string& e) { return ascii::iequals(e, ext); });
}

// ---------------------------------------------------------------------------------------
// Client: replies

void Client::on_reply(const ServerReply& r) {
    if (expects_.empty()) {
        // Nothing asked. A 421 is the server going away (RFC 5321 §3.8); anything else,
        // including an early reply while we write the data, means the dialogue is out of
        // step: nothing can be concluded from it except that the connection is unusable.
        if (r.code == 421) {
            abort_all(reply_result(r, state_ == State::sending ? "DATA" : "greeting", false));
            drop(State::closed, "next hop sent 421 while " + std::string(to_string(state_)));
            return;
        }
        abort_all(local_result(
            Reply::next_hop_protocol,
            "Unexpected reply while " + std::string(to_string(state_)) + ": " + reply_summary(r)));
        drop(State::failed, "unexpected reply while " + std::string(to_string(state_)));
        return;
    }
    Expect e = expects_.front();
    expects_.pop_front();
    if (r.code == 421 && e.cmd != Cmd::quit) {
        // RFC 5321 §3.8: the server is closing. Everything not final is deferred, even a
        // transaction whose data was all sent: only 2xx to "." means delivered.
        static constexpr std::string_view names[] = {"greeting",    "EHLO", "HELO", "STARTTLS",
                                                     "RSET",        "MAIL", "RCPT", "DATA",
                                                     "end of data", "QUIT"};
        abort_all(reply_result(r, names[static_cast<std::size_t>(e.cmd)], false));
        drop(State::closed, "next hop sent 421");
        return;
    }
    switch (e.cmd) {
        case Cmd::greeting:
            on_greeting(r);
            break;
        case Cmd::ehlo:
            on_ehlo(r);
            break;
        case Cmd::helo:
            on_helo(r);
            break;
        case Cmd::starttls:
            on_starttls(r);
            break;
        case Cmd::rset:
            on_rset(r);
            break;
        case Cmd::mail:
        case Cmd::rcpt:
        case Cmd::data:
        case Cmd::dot:
            // A transaction already finished (a refused MAIL) ignores the rest of its group.
            if (Transaction* t = find(e.tx)) {
                if (e.cmd == Cmd::mail) {
                    on_mail(r, *t);
                } else if (e.cmd == Cmd::rcpt) {
                    on_rcpt(r, *t, e.index);
                } else if (e.cmd == Cmd::data) {
                    on_data(r, *t);
                } else {
                    on_dot(r, *t);
                }
            }
            break;
        case Cmd::quit:
            drop(State::closed, "QUIT");
            return;
    }
    sync_state();
}

void Client::on_greeting(const ServerReply& r) {
    if (r.code / 100 == 2) {
        send_command("EHLO " + opt_.helo, Cmd::ehlo);
        return;
    }
    // RFC 5321 §3.1: a 554 greeting still expects our QUIT.
    session_refused(r, "greeting");
}

void Client::on_ehlo(const ServerReply& r) {
    if (r.code / 100 == 5) {
        // RFC 5321 §3.2: an old server that does not know EHLO: fall back to HELO.
        send_command("HELO " + opt_.helo, Cmd::helo);
        return;
    }
    if (r.code / 100 != 2) {
        session_refused(r, "EHLO");
        return;
    }
    // RFC 5321 §4.1.1.1: the first line greets, each further line is "keyword params".
    extensions_.clear();
    size_limit_ = 0;
    for (std::size_t i = 1; i < r.lines.size(); ++i) {
        std::string_view l = r.lines[i];
        std::size_t sp = l.find(' ');
        std::string kw = ascii::upper(l.substr(0, sp));
        if (kw.empty()) {
            continue;
        }
        if (kw == "SIZE" && sp != std::string_view::npos) {
            // RFC 1870 §4: "SIZE n", 0 or absent means no fixed limit.
            std::string_view v = l.substr(sp + 1);
            std::uint64_t n = 0;
            bool ok = !v.empty();
            for (char c : v) {
                if (!is_digit(c) || n > (UINT64_MAX - 9) / 10) {
                    ok = false;
                    break;
                }
                n = n * 10 + static_cast<std::uint64_t>(c - '0');
            }
            size_limit_ = ok ? n : 0;
        }
        extensions_.push_back(std::move(kw));
    }
    pipelining_ = server_supports("PIPELINING");
    if (!tls_active_ && opt_.starttls != StartTls::off) {
        if (server_supports("STARTTLS")) {
            send_command("STARTTLS", Cmd::starttls);
            return;
        }
        if (opt_.starttls == StartTls::required) {
            abort_all(local_result(Reply::tls_unavailable, "The next hop does not offer STARTTLS"));
            send_quit();
            return;
        }
    }
    idle();
}

void Client::on_helo(const ServerReply& r) {
    if (r.code / 100 != 2) {
        session_refused(r, "HELO");
        return;
    }
    extensions_.clear();
    size_limit_ = 0;
    pipelining_ = false;
    if (!tls_active_ && opt_.starttls == StartTls::required) {
        abort_all(local_result(Reply::tls_unavailable, "The next hop does not offer STARTTLS"));
        send_quit();
        return;
    }
    idle();
}

void Client::on_starttls(const ServerReply& r) {
    if (r.code == 220) {
        state_ = State::tls_handshake;
        return;
    }
    if (opt_.starttls == StartTls::required) {
        session_refused(r, "STARTTLS");
        return;
    }
    idle();  // optional: go on in plaintext
}

void Client::on_rset(const ServerReply& r) {
    if (r.code / 100 != 2) {
        // The server's transaction state is unknown: a later MAIL could be refused for
        // reasons that have nothing to do with its message. Leave.
        session_refused(r, "RSET");
        return;
    }
    idle();
}

void Client::on_mail(const ServerReply& r, Transaction& t) {
    if (r.code / 100 == 2) {
        if (!pipelining_) {
            send_rcpt(t, 0);
        }
        return;
    }
    // The MAIL reply decides for every recipient.
    t.mail_refused = true;
    settle_open(t, reply_result(r, "MAIL", false));
    if (!pipelining_) {
        finish_transaction(t, true);
    }
    // With PIPELINING the RCPT and DATA replies are still to come; they are ignored.
}

void Client::on_rcpt(const ServerReply& r, Transaction& t, std::size_t index) {
    if (!t.mail_refused && index < t.status.size() && t.status[index] == 0) {
        if (r.code / 100 == 2) {
            t.status[index] = 1;
            ++t.accepted;
        } else {
            settle(t, index, reply_result(r, "RCPT", false));
        }
    }
    if (pipelining_) {
        return;  // DATA was sent with the group
    }
    if (send_rcpt(t, index + 1)) {
        return;
    }
    if (t.accepted > 0) {
        send_command("DATA", Cmd::data, 0, t.serial);
    } else {
        finish_transaction(t, true);  // no recipient: no DATA, RSET (RFC 5321 §3.3)
    }
}

void Client::on_data(const ServerReply& r, Transaction& t) {
    bool have_recipients = t.accepted > 0 && !t.mail_refused;
    if (r.code / 100 == 3) {
        if (!have_recipients) {
            // A pipelined DATA accepted although no RCPT was (RFC 2920 §3.1): end the data
            // at once without sending the message.
            out_.append(".\r\n");
            expects_.push_back({Cmd::dot, 0, t.serial});
            t.sent_all = true;
            return;
        }
        t.sending = true;
        fill_output();
        return;
    }
    // DATA refused: it decides for the accepted recipients. With no accepted recipient
    // this is the expected 503/554 to a pipelined DATA (RFC 5321 §3.3) and changes
    // nothing. Either way the server may still hold MAIL: RSET.
    if (have_recipients) {
        settle_open(t, r.code / 100 == 2
                           ? local_result(Reply::next_hop_protocol,
                                          "Unexpected reply to DATA: " + reply_summary(r))
                           : reply_result(r, "DATA", false));
    }
    finish_transaction(t, true);
}

void Client::on_dot(const ServerReply& r, Transaction& t) {
    // The only place where a recipient becomes delivered: 2xx to the final ".". Only
    // recipients whose RCPT got 2xx are still open here; after a DATA accepted with no
    // recipient none is, and the reply changes nothing. Either way the server has ended
    // its transaction (RFC 5321 §4.1.1.4): no RSET.
    settle_open(t, reply_result(r, "end of data", false));
    finish_transaction(t, false);
}

// ---------------------------------------------------------------------------------------
// Client: actions

void Client::idle() {
    if (queued_) {
        OutboundMessage m = std::move(*queued_);
        queued_.reset();
        start_transaction(std::move(m));
        return;
    }
    if (quit_requested_) {
        send_quit();
    }
}

void Client::start_transaction(OutboundMessage m) {
    auto& t = txs_.emplace_back();
    t.serial = next_serial_++;
    t.msg = std::move(m);
    const std::size_t n = t.msg.recipients.size();
    t.results.resize(n);
    t.status.assign(n, 0);

    // Refusals we can decide before sending anything. Control characters would let an
    // address inject a command; the spool never holds one, but the check is cheap.
    if (has_control(t.msg.sender)) {
        settle_open(t, local_result(Reply::bad_sender));
        finish_transaction(t, false);
        return;
    }
    bool non_ascii = has_8bit(t.msg.sender);
    std::size_t open = 0;
    for (std::size_t i = 0; i < n; ++i) {
        if (has_control(t.msg.recipients[i]) || t.msg.recipients[i].empty()) {
            settle(t, i, local_result(Reply::bad_recipient));
        } else {
            ++open;
            non_ascii = non_ascii || has_8bit(t.msg.recipients[i]);
        }
    }
    if (open == 0) {
        finish_transaction(t, false);
        return;
    }
    if (non_ascii && !server_supports("SMTPUTF8")) {
        settle_open(t, local_result(Reply::needs_smtputf8));  // RFC 6531 §3.7.4.1
        finish_transaction(t, false);
        return;
    }
    const std::uint64_t size = t.msg.size != 0 ? t.msg.size : t.msg.data.size();
    if (size_limit_ != 0 && size > size_limit_) {
        // RFC 1870 §6: do not send what the server said it cannot take.
        settle_open(t, local_result(Reply::size_exceeded, "Message size " + std::to_string(size) +
                                                              " exceeds the next hop's limit of " +
                                                              std::to_string(size_limit_)));
        finish_transaction(t, false);
        return;
    }
    const bool eight_bit = has_8bit(t.msg.data);
    if (eight_bit && !server_supports("8BITMIME") && opt_.strict_8bitmime) {
        settle_open(t, local_result(Reply::conversion_required));
        finish_transaction(t, false);
        return;
    }

    std::string cmd = "MAIL FROM:<" + t.msg.sender + ">";
    if (server_supports("SIZE")) {
        cmd += " SIZE=" + std::to_string(size);  // RFC 1870 §6
    }
    if (eight_bit && server_supports("8BITMIME")) {
        cmd += " BODY=8BITMIME";  // RFC 6152 §3
    }
    if ((non_ascii || t.msg.smtputf8) && server_supports("SMTPUTF8")) {
        cmd += " SMTPUTF8";  // RFC 6531 §3.4
    }
    send_command(cmd, Cmd::mail, 0, t.serial);
    if (pipelining_) {
        // RFC 2920 §3.1: MAIL, every RCPT and DATA in one group; DATA ends it.
        for (std::size_t i = 0; i < n; ++i) {
            if (t.status[i] == 0) {
                send_command("RCPT TO:<" + t.msg.recipients[i] + ">", Cmd::rcpt,
                             static_cast<std::uint32_t>(i), t.serial);
            }
        }
        send_command("DATA", Cmd::data, 0, t.serial);
    }
}

Client::Transaction* Client::find(std::uint32_t serial) {
    for (auto& t : txs_) {
        if (t.serial == serial) {
            return t.finished ? nullptr : &t;
        }
    }
    return nullptr;
}

Client::Transaction* Client::sending() {
    for (auto& t : txs_) {
        if (t.sending) {
            return &t;
        }
    }
    return nullptr;
}

bool Client::send_rcpt(Transaction& t, std::size_t from) {
    for (std::size_t i = from; i < t.status.size(); ++i) {
        if (t.status[i] == 0) {
            send_command("RCPT TO:<" + t.msg.recipients[i] + ">", Cmd::rcpt,
                         static_cast<std::uint32_t>(i), t.serial);
            return true;
        }
    }
    return false;
}

void Client::send_command(std::string_view line, Cmd cmd, std::uint32_t index, std::uint32_t tx) {
    out_.append(line);
    out_.append("\r\n");
    expects_.push_back({cmd, index, tx});
}

void Client::send_quit() {
    if (quit_sent_) {
        return;
    }
    quit_sent_ = true;
    quit_requested_ = true;
    send_command("QUIT", Cmd::quit);
}

void Client::fill_output() {
    for (Transaction* t = sending(); t != nullptr && out_.size() < opt_.chunk; t = sending()) {
        std::size_t n = std::min(opt_.chunk, t->msg.data.size() - t->pos);
        t->stuffer.feed(t->msg.data.substr(t->pos, n), out_);
        t->pos += n;
        if (t->pos == t->msg.data.size()) {
            t->stuffer.finish(out_);
            t->sending = false;
            t->sent_all = true;
            expects_.push_back({Cmd::dot, 0, t->serial});
        }
    }
    sync_state();
}

void Client::finish_transaction(Transaction& t, bool need_rset) {
    t.finished = true;
    // Results leave in the order the messages were given (a pipelined one refused locally
    // waits for the one ahead of it).
    while (!txs_.empty() && txs_.front().finished) {
        done_.push_back(std::move(txs_.front().results));
        txs_.pop_front();
    }
    if (need_rset) {
        send_command("RSET", Cmd::rset);
        return;
    }
    if (txs_.empty()) {
        idle();
    }
}

void Client::settle(Transaction& t, std::size_t index, RecipientResult r) {
    if (t.status[index] != 2) {
        t.results[index] = std::move(r);
        t.status[index] = 2;
    }
}

void Client::settle_open(Transaction& t, const RecipientResult& r) {
    for (std::size_t i = 0; i < t.status.size(); ++i) {
        settle(t, i, r);
    }
}

void Client::abort_all(const RecipientResult& r) {
    for (auto& t : txs_) {
        settle_open(t, r);  // a finished one has no open recipient left
        done_.push_back(std::move(t.results));
    }
    txs_.clear();
    if (queued_) {
        done_.emplace_back(queued_->recipients.size(), r);
        queued_.reset();
    }
    expects_.clear();
}

void Client::session_refused(const ServerReply& r, std::string_view cmd) {
    abort_all(reply_result(r, cmd, true));
    send_quit();
}

void Client::drop(State s, std::string why) {
    if (!txs_.empty() || queued_) {
        // Every path that ends the connection settles first; this keeps the promise of
        // one result per recipient even if one did not.
        abort_all(local_result(Reply::next_hop_lost));
    }
    expects_.clear();
    out_.clear();
    state_ = s;
    close_reason_ = std::move(why);
}

void Client::sync_state() {
    if (finished() || state_ == State::tls_handshake) {
        return;
    }
    static constexpr State by_cmd[] = {
        State::greeting, State::ehlo, State::helo, State::starttls, State::resetting,
        State::mail,     State::rcpt, State::data, State::data_end, State::quitting};
    if (!expects_.empty()) {
        state_ = by_cmd[static_cast<std::size_t>(expects_.front().cmd)];
    } else if (sending() != nullptr) {
        state_ = State::sending;
    } else if (state_ != State::connecting) {
        state_ = State::ready;
    }
}

}  // namespace sluice::smtp
