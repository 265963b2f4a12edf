#pragma once
// The relay policy (PRODUCT.md §3): a pure function from (connection facts, envelope,
// rules) to a decision. It runs for every connection, MAIL and RCPT.
//
// Trust: `Facts` and the addresses come from the session (peer-controlled, but already
// parsed and canonicalised by policy/address.hpp); `Rules` come from the validated config;
// the maps are read through policy::Maps (policy/maps.hpp) and their values are trusted
// as the operator's.
//
// Promises: no I/O, no exceptions, no global state, no regex. Every decision carries a
// stable code, a reply row of common/reply.hpp, the rule that decided and where it is
// written (FILE:LINE of the config key or the map entry; "default" for a config default;
// "built-in" for the rules below that no setting turns off), and a reason for the log.
// A lookup that is unavailable anywhere on the path yields T140 (fail closed), never an
// accept. Access-map "OK" only exempts from the block list: it never grants relaying.
//
// Order of checks (the first that decides wins):
//   connect  connection_filter (off / allow-listed / deny-listed) -> C130;
//            access client CIDR REJECT -> B120 (554 at greeting, then close).
//   MAIL     access client CIDR, then sender: "local@domain", else "@domain"
//            -> B120 (REJECT) / 450 4.7.1 (DEFER); OK ends that key's checks.
//   RCPT     1. routing tricks in the recipient (source route, '%', '!', '@' in the local
//               part, IP literal) -> D113, for every client, authenticated or not;
//            2. access "rcpt:local@domain", else "rcpt:@domain" -> B120 / DEFER;
//            3. <Postmaster> -> L101 (RFC 5321 §4.1.1.3);
//            4. local domain (domains.local, else map local_domains):
//               map local_addresses entry -> L101 (value: target mailbox);
//               postmaster@ -> L101 (RFC 5321 §4.5.1);
//               map catch_all entry for the domain -> L102 (value: catch-all mailbox);
//               no address list: local_addresses is empty, or has the entry "@domain"
//               -> L101 ("domain-wide": the next hop validates recipients);
//               else -> L103 (550 5.1.1 at RCPT time, so nothing is bounced later);
//            5. relay, any enabled criterion grants, tried in this order:
//               relay.enabled = false -> D112; authenticated -> G108 (names the user);
//               privileged_networks -> G107 (names the network and its map line);
//               local_senders -> G106 (the sender's domain is local and the sender is
//               on local_addresses, or the domain has no address list; never <> nor a
//               sender with routing marks);
//               open (only with acknowledge_open_relay) -> G110; else D109 when
//               local_senders was the only criterion that could apply, else D111.
// Local-part lookups try the canonical form, then the local part in lower case (map keys
// are usually written in lower case; RFC 5321 §2.4 leaves case to the receiving host).

#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "common/config.hpp"
#include "common/net.hpp"
#include "common/reply.hpp"
#include "policy/address.hpp"
#include "policy/maps.hpp"

namespace sluice::policy {

// What the session knows about the client when it asks.
struct Facts {
    std::string_view listener;  // listener name (for the reason)
    Role role = Role::mx;
    IpAddr client;
    std::string_view helo;
    bool tls = false;
    std::string_view auth_user;  // empty: not authenticated
};

enum class Verdict { accept, reject, defer };

enum class Code {
    L101,
    L102,
    L103,
    G106,
    G107,
    G108,
    G110,
    D109,
    D111,
    D112,
    D113,
    B120,
    C130,
    T140,
    R150,  // rate limit: connections (daemon/rates/limits.hpp, README "Rate limits")
    R151,  // rate limit: messages
    R152,  // rate limit: recipients
    R153,  // rate limit: errors
    A000,  // a plain accept: connection or MAIL passed every check
};

// "L101", ... as in the log, `explain` and the metric label.
std::string_view code_name(Code code);
std::string_view verdict_name(Verdict verdict);

struct Decision {
    Verdict verdict = Verdict::defer;  // defaults fail closed
    Code code = Code::T140;
    Reply reply = Reply::lookup_failed;
    std::string reply_text;  // empty: the table text; else e.g. the access map's REJECT text
    std::string rule;        // "relay.authenticated", "map privileged_networks 10.0.0.0/8 (office)"
    std::string source;      // FILE:LINE of that rule, "default" or "built-in"
    std::string reason;      // for the log
    std::string deliver_to;  // L101 with a target, L102, <Postmaster>: the mailbox to deliver to

    bool accepted() const { return verdict == Verdict::accept; }
    // The reply as sent, without CRLF (for logs and `explain`).
    std::string reply_line() const;
};

struct Rules {
    RelayConfig relay{};  // all false: nothing relays
    FilterMode filter = FilterMode::off;
    std::vector<std::string> local_domains;    // lower-case, no trailing dot
    std::string hostname;                      // where <Postmaster> goes without local domains
    std::map<std::string, SourceRef> sources;  // config key -> where it was set

    static Rules from_config(const Config& config);

    bool is_config_local(std::string_view domain) const;
    // "FILE:LINE" where `key` was set, or "default".
    std::string source_of(std::string_view key) const;
};

Decision decide_connect(const Facts& facts, const Rules& rules, const Maps& maps);
Decision decide_mail(const Facts& facts, const Address& sender, const Rules& rules,
                     const Maps& maps);
Decision decide_rcpt(const Facts& facts, const Address& sender, const Address& rcpt,
                     const Rules& rules, const Maps& maps);

// A recipient path that does not even parse (RFC 5321 §4.1.2) but carries the marks of a
// relay trick: a second '@', '%', '!', a source route, a quoted local part, an address
// literal. D113 with 501 5.1.3, so that the attempt is on record (log, metric,
// log-report) like every decided one; nullopt for a path that is merely malformed.
// `path` is the RCPT argument from its '<'.
std::optional<Decision> unparsable_routing(std::string_view path);

// connect, MAIL and RCPT in turn: the first decision that is not an accept, else the
// RCPT decision. For `sluicectl explain`.
Decision decide_envelope(const Facts& facts, const Address& sender, const Address& rcpt,
                         const Rules& rules, const Maps& maps);

}  // namespace sluice::policy
