#include "policy/policy.hpp"

#include <algorithm>
#include <optional>

namespace sluice::policy {
namespace {

constexpr std::string_view kBuiltIn = "built-in";

Decision make(Verdict verdict, Code code, Reply reply, std::string rule, std::string source,
              std::string reason) {
    Decision d;
    d.verdict = verdict;
    d.code = code;
    d.reply = reply;
    d.rule = std::move(rule);
    d.source = std::move(source);
    d.reason = std::move(reason);
    return d;
}

std::string source_or_builtin(const Lookup& l) {
    return l.source.empty() ? std::string(kBuiltIn) : l.source;
}

// T140: a map could not be read. Fail closed with a temporary failure, so the client
// retries and nothing is accepted that a working map would have refused.
Decision lookup_failed(MapId map, const Lookup& l, std::string_view key, bool at_connect) {
    std::string name(map_name(map));
    return make(Verdict::defer, Code::T140,
                at_connect ? Reply::lookup_failed_connect : Reply::lookup_failed, "map " + name,
                source_or_builtin(l),
                "map " + name + " unavailable looking up " + std::string(key) + " (fail closed)");
}

bool has_upper(std::string_view s) {
    return std::any_of(s.begin(), s.end(), [](char c) { return c >= 'A' && c <= 'Z'; });
}

std::string lower_ascii(std::string_view s) {
    std::string out(s);
    for (char& c : out) {
        if (c >= 'A' && c <= 'Z') {
            c = static_cast<char>(c - 'A' + 'a');
        }
    }
    return out;
}

// Looks up "prefix local@domain", then (when it differs) the same with the local part in
// lower case. Returns the first found or unavailable answer, else missing.
Lookup find_address(const Maps& maps, MapId map, std::string_view prefix, const Address& a) {
    std::string key(prefix);
    key += a.str();
    Lookup l = maps.find(map, key);
    if (l.status != Lookup::Status::missing || !has_upper(a.local)) {
        return l;
    }
    key.resize(prefix.size());
    key += lower_ascii(a.local);
    key.push_back('@');
    key += a.domain;
    return maps.find(map, key);
}

// ----- access map -----

struct Action {
    enum class Kind { ok, reject, defer, unknown };
    Kind kind = Kind::unknown;
    std::string_view text;  // what follows the keyword, trimmed
};

std::string_view trim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) {
        s.remove_prefix(1);
    }
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) {
        s.remove_suffix(1);
    }
    return s;
}

bool keyword_is(std::string_view word, std::string_view upper) {
    if (word.size() != upper.size()) {
        return false;
    }
    for (std::size_t i = 0; i < word.size(); ++i) {
        char c = word[i];
        if (c >= 'a' && c <= 'z') {
            c = static_cast<char>(c - 'a' + 'A');
        }
        if (c != upper[i]) {
            return false;
        }
    }
    return true;
}

// "OK" | "REJECT [text]" | "DEFER [text]" (PRODUCT.md §5), keywords in any case.
Action parse_action(std::string_view value) {
    value = trim(value);
    std::size_t sp = value.find_first_of(" \t");
    std::string_view word = value.substr(0, sp);
    std::string_view rest =
        sp == std::string_view::npos ? std::string_view{} : trim(value.substr(sp));
    Action a;
    a.text = rest;
    if (keyword_is(word, "OK")) {
        a.kind = rest.empty() ? Action::Kind::ok : Action::Kind::unknown;
    } else if (keyword_is(word, "REJECT")) {
        a.kind = Action::Kind::reject;
    } else if (keyword_is(word, "DEFER")) {
        a.kind = Action::Kind::defer;
    }
    return a;
}

// Turns a found access entry into a decision; nullopt for OK (no block).
// `what` names the checked item for the reason: "client 192.0.2.1", "sender a@b.test".
std::optional<Decision> access_decision(const Lookup& l, std::string_view what) {
    Action act = parse_action(l.value);
    std::string rule = "map access " + l.key;
    std::string entry = "access entry " + l.key + " \"" + l.value + "\"";
    switch (act.kind) {
        case Action::Kind::ok:
            return std::nullopt;
        case Action::Kind::reject: {
            Decision d = make(Verdict::reject, Code::B120, Reply::blocked, rule,
                              source_or_builtin(l), std::string(what) + " blocked by " + entry);
            d.reply_text = std::string(act.text);
            return d;
        }
        case Action::Kind::defer: {
            Decision d = make(Verdict::defer, Code::B120, Reply::deferred, rule,
                              source_or_builtin(l), std::string(what) + " deferred by " + entry);
            d.reply_text = std::string(act.text);
            return d;
        }
        case Action::Kind::unknown:
            break;
    }
    // An entry the policy cannot read must not be skipped (it was meant to block
    // something): defer, so the operator sees it and no mail is lost.
    return make(Verdict::defer, Code::B120, Reply::deferred, rule, source_or_builtin(l),
                std::string(what) + " deferred: unrecognised " + entry);
}

// Client CIDR entries of the access map at MAIL time (REJECT, DEFER, OK).
std::optional<Decision> access_client(const Facts& f, const Maps& maps) {
    Lookup l = maps.find_cidr(MapId::access, f.client);
    if (l.unavailable()) {
        return lookup_failed(MapId::access, l, format_ip(f.client), false);
    }
    if (l.found()) {
        return access_decision(l, "client " + format_ip(f.client));
    }
    return std::nullopt;
}

// "PREFIXlocal@domain" (either case of the local part), else "PREFIX@domain".
std::optional<Decision> access_address(const Maps& maps, std::string_view prefix, const Address& a,
                                       std::string_view what) {
    Lookup l = find_address(maps, MapId::access, prefix, a);
    if (l.status == Lookup::Status::missing && !a.domain.empty()) {
        std::string key(prefix);
        key.push_back('@');
        key += a.domain;
        l = maps.find(MapId::access, key);
    }
    if (l.unavailable()) {
        return lookup_failed(MapId::access, l, std::string(prefix) + a.str(), false);
    }
    if (l.found()) {
        return access_decision(l, std::string(what) + " " + a.str());
    }
    return std::nullopt;
}

// ----- local domains and addresses -----

struct Hit {
    Lookup::Status status = Lookup::Status::missing;
    std::string rule;
    std::string source;
    Lookup lookup;  // the failed lookup, for T140
    MapId map = MapId::local_domains;
};

// Whether `domain` is served here: config domains.local (no lookup), else map local_domains.
Hit local_domain(const Rules& rules, const Maps& maps, std::string_view domain) {
    Hit h;
    if (rules.is_config_local(domain)) {
        h.status = Lookup::Status::found;
        h.rule = "domains.local " + std::string(domain);
        h.source = rules.source_of("domains.local");
        return h;
    }
    Lookup l = maps.find(MapId::local_domains, domain);
    h.status = l.status;
    h.map = MapId::local_domains;
    if (l.found()) {
        h.rule = "map local_domains " + l.key;
        h.source = source_or_builtin(l);
    }
    h.lookup = std::move(l);
    return h;
}

// Whether every address at `domain` counts as known: local_addresses holds the
// domain-wide entry "@domain", or holds no entry at all (no address list configured:
// the next hop validates recipients).
Hit domain_wide(const Maps& maps, std::string_view domain) {
    Hit h;
    h.map = MapId::local_addresses;
    std::string key = "@" + std::string(domain);
    Lookup l = maps.find(MapId::local_addresses, key);
    if (l.found()) {
        h.status = Lookup::Status::found;
        h.rule = "map local_addresses " + l.key;
        h.source = source_or_builtin(l);
        return h;
    }
    if (l.unavailable()) {
        h.status = l.status;
        h.lookup = std::move(l);
        return h;
    }
    Lookup::Status any = maps.has_entries(MapId::local_addresses);
    if (any == Lookup::Status::missing) {
        h.status = Lookup::Status::found;
        h.rule = "map local_addresses (empty: no address list)";
        h.source = std::string(kBuiltIn);
    } else if (any == Lookup::Status::unavailable) {
        h.status = any;
        h.lookup.status = any;
    }
    return h;
}

bool routing_marks(const Address& a) {
    return a.had_source_route || a.ip_literal || a.local.find_first_of("%!@") != std::string::npos;
}

// The sender side of G106: a local domain and a known address there.
Hit local_sender(const Rules& rules, const Maps& maps, const Address& sender) {
    Hit h;
    if (sender.null || sender.postmaster_only || routing_marks(sender)) {
        return h;
    }
    Hit dom = local_domain(rules, maps, sender.domain);
    if (dom.status != Lookup::Status::found) {
        return dom;
    }
    Lookup l = find_address(maps, MapId::local_addresses, "", sender);
    if (l.found()) {
        h.status = Lookup::Status::found;
        h.rule = "map local_addresses " + l.key;
        h.source = source_or_builtin(l);
        return h;
    }
    if (l.unavailable()) {
        h.status = l.status;
        h.map = MapId::local_addresses;
        h.lookup = std::move(l);
        return h;
    }
    Hit wide = domain_wide(maps, sender.domain);
    if (wide.status == Lookup::Status::found) {
        wide.rule = dom.rule + ", " + wide.rule;
    }
    return wide;
}

Decision failed(const Hit& h, std::string_view key) {
    return lookup_failed(h.map, h.lookup, key, false);
}

// ----- RCPT steps -----

std::optional<Decision> routing_trick(const Address& rcpt) {
    auto deny = [&](Reply reply, std::string_view what, std::string_view why) {
        return make(Verdict::reject, Code::D113, reply, "routing: " + std::string(what),
                    std::string(kBuiltIn), "recipient " + rcpt.str() + ": " + std::string(why));
    };
    if (rcpt.had_source_route) {
        return deny(Reply::routing_syntax, "source route",
                    "source route given (RFC 5321 §3.6.1, §C), refused");
    }
    if (rcpt.ip_literal) {
        return deny(Reply::routing_denied, "IP literal", "address literal as recipient domain");
    }
    if (rcpt.local.find('@') != std::string::npos) {
        return deny(Reply::routing_denied, "quoted @", "'@' inside the quoted local part");
    }
    if (rcpt.local.find('%') != std::string::npos) {
        return deny(Reply::routing_denied, "percent hack", "'%' in the local part");
    }
    if (rcpt.local.find('!') != std::string::npos) {
        return deny(Reply::routing_denied, "bang path", "'!' in the local part");
    }
    return std::nullopt;
}

}  // namespace

std::optional<Decision> unparsable_routing(std::string_view path) {
    auto close = path.find('>');
    std::string_view inner = path.substr(1, close == std::string_view::npos ? std::string_view::npos
                                                                            : close - 1);
    std::string_view what;
    if (!inner.empty() && inner.front() == '@') {
        what = "source route";
    } else if (std::count(inner.begin(), inner.end(), '@') > 1) {
        what = "second @";
    } else if (inner.find('%') != std::string_view::npos) {
        what = "percent hack";
    } else if (inner.find('!') != std::string_view::npos) {
        what = "bang path";
    } else if (inner.find('"') != std::string_view::npos) {
        what = "quoted local part";
    } else if (inner.find('[') != std::string_view::npos) {
        what = "IP literal";
    } else {
        return std::nullopt;
    }
    return make(Verdict::reject, Code::D113, Reply::routing_syntax,
                "routing: " + std::string(what), std::string(kBuiltIn),
                "unparsable recipient path with a relay trick's marks (" + std::string(what) +
                    "), refused");
}

namespace {

bool is_postmaster(std::string_view local) {
    return keyword_is(local, "POSTMASTER");
}

Decision local_recipient(const Maps& maps, const Address& rcpt, const Hit& dom) {
    std::string addr = rcpt.str();
    Lookup l = find_address(maps, MapId::local_addresses, "", rcpt);
    if (l.unavailable()) {
        return lookup_failed(MapId::local_addresses, l, addr, false);
    }
    if (l.found()) {
        Decision d =
            make(Verdict::accept, Code::L101, Reply::recipient_local,
                 "map local_addresses " + l.key, source_or_builtin(l), "local address " + addr);
        if (!l.value.empty()) {
            d.deliver_to = l.value;
            d.reason += " -> " + l.value;
        }
        return d;
    }
    if (is_postmaster(rcpt.local)) {
        return make(Verdict::accept, Code::L101, Reply::recipient_local, "postmaster",
                    std::string(kBuiltIn),
                    "postmaster of local domain " + rcpt.domain + " (RFC 5321 §4.5.1)");
    }
    Lookup c = maps.find(MapId::catch_all, rcpt.domain);
    if (c.unavailable()) {
        return lookup_failed(MapId::catch_all, c, rcpt.domain, false);
    }
    if (c.found()) {
        Decision d =
            make(Verdict::accept, Code::L102, Reply::recipient_local, "map catch_all " + c.key,
                 source_or_builtin(c), "unknown address " + addr + " to the catch-all");
        d.deliver_to = c.value.empty() ? addr : c.value;
        d.reason += " " + d.deliver_to;
        return d;
    }
    Hit wide = domain_wide(maps, rcpt.domain);
    if (wide.status == Lookup::Status::unavailable) {
        return failed(wide, addr);
    }
    if (wide.status == Lookup::Status::found) {
        return make(
            Verdict::accept, Code::L101, Reply::recipient_local, wide.rule, wide.source,
            "local domain " + rcpt.domain + " (" + dom.rule + ") has no address list: domain-wide");
    }
    // Its source: where the domain was made local (the address list has no line for it).
    return make(Verdict::reject, Code::L103, Reply::unknown_user, "map local_addresses",
                dom.source.empty() ? std::string(kBuiltIn) : dom.source,
                "unknown address " + addr + " at local domain " + rcpt.domain + ", no catch_all");
}

Decision relay(const Facts& f, const Address& sender, const Address& rcpt, const Rules& rules,
               const Maps& maps) {
    const RelayConfig& r = rules.relay;
    std::string to = rcpt.str();
    if (!r.enabled) {
        return make(Verdict::reject, Code::D112, Reply::relay_denied, "relay.enabled",
                    rules.source_of("relay.enabled"),
                    "relay to " + to + " denied: relaying is disabled");
    }
    if (r.authenticated && !f.auth_user.empty()) {
        return make(Verdict::accept, Code::G108, Reply::relay_granted, "relay.authenticated",
                    rules.source_of("relay.authenticated"),
                    "relay to " + to + " granted: authenticated as " + std::string(f.auth_user));
    }
    if (r.privileged_networks) {
        Lookup l = maps.find_cidr(MapId::privileged_networks, f.client);
        if (l.unavailable()) {
            return lookup_failed(MapId::privileged_networks, l, format_ip(f.client), false);
        }
        if (l.found()) {
            std::string net = l.key + (l.value.empty() ? "" : " (" + l.value + ")");
            return make(Verdict::accept, Code::G107, Reply::relay_granted,
                        "map privileged_networks " + net, source_or_builtin(l),
                        "relay to " + to + " granted: client " + format_ip(f.client) +
                            " in privileged network " + net);
        }
    }
    if (r.local_senders) {
        Hit h = local_sender(rules, maps, sender);
        if (h.status == Lookup::Status::unavailable) {
            return failed(h, sender.str());
        }
        if (h.status == Lookup::Status::found) {
            return make(Verdict::accept, Code::G106, Reply::relay_granted, "relay.local_senders",
                        rules.source_of("relay.local_senders"),
                        "relay to " + to + " granted: sender " + sender.str() +
                            " is a local address (" + h.rule + " at " + h.source + ")");
        }
    }
    // Open mode needs the operator's acknowledgement here too: Rules built by hand
    // cannot open the relay by one flag.
    if (r.open && r.acknowledge_open_relay) {
        return make(Verdict::accept, Code::G110, Reply::relay_granted, "relay.open",
                    rules.source_of("relay.open"), "relay to " + to + " granted: open relay mode");
    }
    bool auth_could_apply = r.authenticated && f.role == Role::submission;
    if (r.local_senders && !auth_could_apply && !r.privileged_networks) {
        return make(
            Verdict::reject, Code::D109, Reply::relay_denied, "relay.local_senders",
            rules.source_of("relay.local_senders"),
            "relay to " + to + " denied: sender <" + sender.str() + "> is not a local address");
    }
    std::string tried;
    auto add = [&](std::string_view s) {
        tried += tried.empty() ? "" : "; ";
        tried += s;
    };
    if (r.authenticated) {
        add("not authenticated");
    }
    if (r.privileged_networks) {
        add("client " + format_ip(f.client) + " not in privileged_networks");
    }
    if (r.local_senders) {
        add("sender <" + sender.str() + "> not a local address");
    }
    if (tried.empty()) {
        tried = "no relay criterion is enabled";
    }
    // Its source: the relay settings (where relaying was enabled, or "default").
    return make(Verdict::reject, Code::D111, Reply::relay_denied, "relay",
                rules.source_of("relay.enabled"), "relay to " + to + " denied: " + tried);
}

}  // namespace

std::string_view code_name(Code code) {
    switch (code) {
        case Code::L101:
            return "L101";
        case Code::L102:
            return "L102";
        case Code::L103:
            return "L103";
        case Code::G106:
            return "G106";
        case Code::G107:
            return "G107";
        case Code::G108:
            return "G108";
        case Code::G110:
            return "G110";
        case Code::D109:
            return "D109";
        case Code::D111:
            return "D111";
        case Code::D112:
            return "D112";
        case Code::D113:
            return "D113";
        case Code::B120:
            return "B120";
        case Code::C130:
            return "C130";
        case Code::T140:
            return "T140";
        case Code::R150:
            return "R150";
        case Code::R151:
            return "R151";
        case Code::R152:
            return "R152";
        case Code::R153:
            return "R153";
        case Code::A000:
            return "A000";
    }
    return "unknown";
}

std::string_view verdict_name(Verdict verdict) {
    switch (verdict) {
        case Verdict::accept:
            return "accept";
        case Verdict::reject:
            return "reject";
        case Verdict::defer:
            return "defer";
    }
    return "unknown";
}

std::string Decision::reply_line() const {
    return sluice::reply_line(reply, {}, reply_text);
}

Rules Rules::from_config(const Config& config) {
    Rules r;
    r.relay = config.relay;
    r.filter = config.connections.filter;
    r.local_domains = config.domains.local;
    r.hostname = config.server.hostname;
    r.sources = config.sources;
    return r;
}

bool Rules::is_config_local(std::string_view domain) const {
    return std::find(local_domains.begin(), local_domains.end(), domain) != local_domains.end();
}

std::string Rules::source_of(std::string_view key) const {
    auto it = sources.find(std::string(key));
    return it == sources.end() ? std::string("default") : it->second.str();
}

Decision decide_connect(const Facts& facts, const Rules& rules, const Maps& maps) {
    std::string ip = format_ip(facts.client);
    Decision accept = make(Verdict::accept, Code::A000, Reply::greeting, "", "", "");
    if (rules.filter != FilterMode::off) {
        bool allow_listed = rules.filter == FilterMode::allow_listed;
        Lookup l = maps.find_cidr(MapId::connection_filter, facts.client);
        if (l.unavailable()) {
            return lookup_failed(MapId::connection_filter, l, ip, true);
        }
        std::string mode = allow_listed ? "allow-listed" : "deny-listed";
        if (!l.found()) {
            if (allow_listed) {
                return make(Verdict::reject, Code::C130, Reply::connection_refused,
                            "connections.filter = allow-listed",
                            rules.source_of("connections.filter"),
                            "client " + ip + " not on the connection_filter allow list");
            }
            accept.rule = "connections.filter = deny-listed";
            accept.source = rules.source_of("connections.filter");
            accept.reason = "client " + ip + " not on the connection_filter deny list";
        } else {
            std::string_view v = trim(l.value);
            std::string entry = "map connection_filter " + l.key + " (" + l.value + ")";
            if (keyword_is(v, "ALLOW")) {
                accept.rule = entry;
                accept.source = source_or_builtin(l);
                accept.reason = "client " + ip + " allowed by " + entry;
            } else {
                // "deny", or a value that is neither: refuse rather than guess.
                return make(Verdict::reject, Code::C130, Reply::connection_refused, entry,
                            source_or_builtin(l),
                            "client " + ip + " refused by " + entry + " (filter " + mode + ")");
            }
        }
    }
    // Only REJECT applies at the greeting (RFC 5321 §3.1 allows 554 there, not 450);
    // DEFER and OK client entries are applied at MAIL.
    Lookup a = maps.find_cidr(MapId::access, facts.client);
    if (a.unavailable()) {
        return lookup_failed(MapId::access, a, ip, true);
    }
    if (a.found()) {
        Action act = parse_action(a.value);
        if (act.kind == Action::Kind::reject) {
            Decision d =
                make(Verdict::reject, Code::B120, Reply::connection_refused, "map access " + a.key,
                     source_or_builtin(a),
                     "client " + ip + " blocked by access entry " + a.key + " \"" + a.value + "\"");
            d.reply_text = std::string(act.text);
            return d;
        }
    }
    return accept;
}

Decision decide_mail(const Facts& facts, const Address& sender, const Rules& rules,
                     const Maps& maps) {
    (void)rules;
    if (auto d = access_client(facts, maps)) {
        return std::move(*d);
    }
    if (!sender.null) {
        if (auto d = access_address(maps, "", sender, "sender")) {
            return std::move(*d);
        }
    }
    return make(Verdict::accept, Code::A000, Reply::sender_ok, "", "",
                "sender <" + sender.str() + ">");
}

Decision decide_rcpt(const Facts& facts, const Address& sender, const Address& rcpt,
                     const Rules& rules, const Maps& maps) {
    if (auto d = routing_trick(rcpt)) {
        return std::move(*d);
    }
    if (auto d = access_address(maps, "rcpt:", rcpt, "recipient")) {
        return std::move(*d);
    }
    if (rcpt.postmaster_only) {
        Decision d = make(Verdict::accept, Code::L101, Reply::recipient_local, "postmaster",
                          std::string(kBuiltIn), "<Postmaster> (RFC 5321 §4.1.1.3)");
        d.deliver_to = "postmaster@" +
                       (rules.local_domains.empty() ? rules.hostname : rules.local_domains.front());
        return d;
    }
    Hit dom = local_domain(rules, maps, rcpt.domain);
    if (dom.status == Lookup::Status::unavailable) {
        return failed(dom, rcpt.domain);
    }
    if (dom.status == Lookup::Status::found) {
        return local_recipient(maps, rcpt, dom);
    }
    return relay(facts, sender, rcpt, rules, maps);
}

Decision decide_envelope(const Facts& facts, const Address& sender, const Address& rcpt,
                         const Rules& rules, const Maps& maps) {
    Decision d = decide_connect(facts, rules, maps);
    if (!d.accepted()) {
        return d;
    }
    d = decide_mail(facts, sender, rules, maps);
    if (!d.accepted()) {
        return d;
    }
    return decide_rcpt(facts, sender, rcpt, rules, maps);
}

}  // namespace sluice::policy
