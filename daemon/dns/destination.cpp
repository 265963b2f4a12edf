#include "daemon/dns/destination.hpp"

#include <algorithm>
#include <climits>

#include "common/config.hpp"

namespace sluice::dns {
namespace {

constexpr std::uint16_t kNoSelf = UINT16_MAX;

bool addr_is_self(const Self& self, const IpAddr& a) {
    if ((a.v4 && self.any_v4) || (!a.v4 && self.any_v6)) {
        return true;
    }
    return std::find(self.addrs.begin(), self.addrs.end(), a) != self.addrs.end();
}

bool name_is_self(const Self& self, const std::string& n) {
    return std::find(self.names.begin(), self.names.end(), n) != self.names.end();
}

void follow(LookupFn lookup, std::string name, Type type, LookupDone done, int depth,
            std::uint32_t ttl) {
    lookup(name, type, [lookup, type, done, depth, ttl](const Result& r) {
        if (r.status != Status::cname) {
            if (depth == 0) {
                done(r);
                return;
            }
            Result out = r;
            if (out.ttl) {
                out.ttl = std::min(*out.ttl, ttl);
            }
            done(out);
            return;
        }
        if (depth + 1 >= limits::cname_chain) {
            Result bad;
            bad.status = Status::malformed;
            bad.canonical = r.canonical;
            bad.detail = "CNAME chain longer than " + std::to_string(limits::cname_chain);
            done(bad);
            return;
        }
        follow(lookup, r.canonical, type, done, depth + 1, std::min(ttl, r.ttl.value_or(0)));
    });
}

struct Planner : std::enable_shared_from_this<Planner> {
    std::string domain;
    Self self;
    PlanOptions opts;
    std::mt19937* rng = nullptr;
    LookupFn lookup;
    std::function<void(Destination)> done;

    Destination dest;
    struct Host {
        Record mx;
        Result a, aaaa;
        int pending = 2;
    };
    std::vector<Host> hosts;
    int pending = 0;
    bool any_temporary = false;

    void finish() {
        auto d = std::move(done);
        d(std::move(dest));
    }

    void verdict(Destination::Verdict v, Reply r, std::string detail) {
        dest.verdict = v;
        dest.reply = r;
        dest.detail = std::move(detail);
        finish();
    }

    void start() {
        auto self_ptr = shared_from_this();
        lookup_following(lookup, domain, Type::mx,
                         [self_ptr](const Result& r) { self_ptr->on_mx(r); });
    }

    void on_mx(const Result& r) {
        dest.mx_ttl = r.ttl.value_or(0);
        dest.ttl = dest.mx_ttl;
        std::vector<Record> mx;
        switch (r.status) {
            case Status::ok:
                if (is_null_mx(r.records)) {
                    dest.null_mx = true;
                    verdict(Destination::Verdict::bounce, Reply::dns_null_mx, domain);
                    return;
                }
                for (const auto& x : order_mx(r.records, *rng)) {
                    if (!x.target.empty()) {  // a "." among real MX records is ignored
                        mx.push_back(x);
                    }
                }
                break;
            case Status::nodata: {
                // RFC 5321 §5.1: no MX, the domain itself is the host (implicit MX).
                dest.implicit = true;
                Record self_mx;
                self_mx.name = domain;
                self_mx.type = Type::mx;
                self_mx.target = domain;
                mx.push_back(self_mx);
                break;
            }
            case Status::nxdomain:
                verdict(Destination::Verdict::bounce, Reply::dns_no_domain, domain);
                return;
            default:
                verdict(Destination::Verdict::defer, Reply::dns_temporary,
                        domain + " MX (" + (r.detail.empty() ? std::string(to_string(r.status))
                                                             : r.detail) + ")");
                return;
        }
        // RFC 5321 §5.1: when this host is one of the MX, only the more preferred ones
        // may be used; none left means the mail would come back to us.
        std::uint16_t cutoff = kNoSelf;
        for (const auto& x : mx) {
            if (name_is_self(self, x.target)) {
                cutoff = std::min(cutoff, x.preference);
            }
        }
        for (const auto& x : mx) {
            if (cutoff != kNoSelf && x.preference >= cutoff) {
                HostReport h;
                h.name = x.target;
                h.preference = x.preference;
                h.status = "self";
                dest.hosts.push_back(std::move(h));
                continue;
            }
            if (hosts.size() < opts.max_hosts) {
                hosts.push_back(Host{x, {}, {}, 2});
            }
        }
        if (hosts.empty()) {
            verdict(Destination::Verdict::bounce, Reply::dns_mx_loop, domain);
            return;
        }
        pending = static_cast<int>(hosts.size()) * 2;
        auto self_ptr = shared_from_this();
        for (std::size_t i = 0; i < hosts.size(); ++i) {
            for (Type t : {Type::a, Type::aaaa}) {
                lookup_following(lookup, hosts[i].mx.target, t, [self_ptr, i, t](const Result& r) {
                    auto& h = self_ptr->hosts[i];
                    (t == Type::a ? h.a : h.aaaa) = r;
                    if (--self_ptr->pending == 0) {
                        self_ptr->addresses_done();
                    }
                });
            }
        }
    }

    void addresses_done() {
        // A host that resolves to one of our own addresses is us under another name.
        std::uint16_t cutoff = kNoSelf;
        for (const auto& h : hosts) {
            for (const Result* r : {&h.a, &h.aaaa}) {
                for (const auto& rec : r->records) {
                    if (r->status == Status::ok && addr_is_self(self, rec.addr)) {
                        cutoff = std::min(cutoff, h.mx.preference);
                    }
                }
            }
        }
        bool all_absent = true;
        bool self_found = false;
        for (const auto& h : hosts) {
            HostReport rep;
            rep.name = h.mx.target;
            rep.preference = h.mx.preference;
            const Result& first = opts.prefer == Prefer::ipv6 ? h.aaaa : h.a;
            const Result& second = opts.prefer == Prefer::ipv6 ? h.a : h.aaaa;
            rep.canonical = first.status == Status::ok ? first.canonical : second.canonical;
            bool excluded = cutoff != kNoSelf && h.mx.preference >= cutoff;
            for (const Result* r : {&first, &second}) {
                if (r->status == Status::temporary || r->status == Status::malformed) {
                    any_temporary = true;
                } else if (r->status == Status::ok) {
                    all_absent = false;
                    dest.ttl = std::min(dest.ttl, r->ttl.value_or(0));
                    for (const auto& rec : r->records) {
                        rep.addrs.emplace_back(rec.addr, r->ttl.value_or(0));
                        if (!excluded && dest.targets.size() < opts.max_targets) {
                            dest.targets.push_back(Target{h.mx.target, h.mx.preference, rec.addr});
                        }
                    }
                }
            }
            if (excluded) {
                rep.status = "self";
                self_found = true;
            } else if (first.status == Status::ok || second.status == Status::ok) {
                rep.status = "ok";
            } else if (first.status == Status::temporary || second.status == Status::temporary ||
                       first.status == Status::malformed || second.status == Status::malformed) {
                rep.status = "temporary";
            } else {
                rep.status = std::string(to_string(first.status));
            }
            dest.hosts.push_back(std::move(rep));
        }
        if (!dest.targets.empty()) {
            dest.verdict = Destination::Verdict::deliver;
            finish();
            return;
        }
        if (self_found) {
            verdict(Destination::Verdict::bounce, Reply::dns_mx_loop, domain);
        } else if (any_temporary) {
            verdict(Destination::Verdict::defer, Reply::dns_temporary, domain + " MX host address");
        } else if (dest.implicit && all_absent) {
            // No MX and no address: nowhere to deliver (RFC 5321 §5.1).
            verdict(Destination::Verdict::bounce, Reply::dns_no_domain, domain);
        } else {
            // MX hosts that do not resolve: a broken zone may be fixed; retry.
            verdict(Destination::Verdict::defer, Reply::dns_temporary,
                    domain + " MX hosts have no address");
        }
    }
};

}  // namespace

Self self_of(const Config& cfg) {
    Self self;
    self.names.push_back(normalise_name(cfg.server.hostname));
    IpAddr any6{};
    IpAddr any4{};
    any4.v4 = true;
    any4.bytes[10] = any4.bytes[11] = 0xFF;
    for (const auto& l : cfg.listeners) {
        if (l.address.port != 25) {
            continue;  // delivery by MX connects to port 25 only
        }
        if (l.address.ip == any4) {
            self.any_v4 = true;
        } else if (l.address.ip == any6) {
            self.any_v6 = true;
        } else {
            self.addrs.push_back(l.address.ip);
        }
    }
    return self;
}

std::string_view to_string(Destination::Verdict v) {
    switch (v) {
        case Destination::Verdict::deliver:
            return "deliver";
        case Destination::Verdict::bounce:
            return "bounce";
        case Destination::Verdict::defer:
            return "defer";
    }
    return "?";
}

std::vector<Record> order_mx(std::vector<Record> mx, std::mt19937& rng) {
    std::sort(mx.begin(), mx.end(), [](const Record& a, const Record& b) {
        return a.preference < b.preference || (a.preference == b.preference && a.target < b.target);
    });
    for (auto it = mx.begin(); it != mx.end();) {
        auto end = std::find_if(it, mx.end(),
                                [&](const Record& r) { return r.preference != it->preference; });
        std::shuffle(it, end, rng);
        it = end;
    }
    return mx;
}

bool is_null_mx(const std::vector<Record>& mx) {
    return mx.size() == 1 && mx.front().type == Type::mx && mx.front().target.empty();
}

void lookup_following(LookupFn lookup, const std::string& name, Type type, LookupDone done) {
    follow(std::move(lookup), name, type, std::move(done), 0, UINT32_MAX);
}

void plan_destination(const std::string& domain, const Self& self, const PlanOptions& opts,
                      std::mt19937& rng, LookupFn lookup, std::function<void(Destination)> done) {
    auto p = std::make_shared<Planner>();
    p->domain = normalise_name(domain);
    p->self = self;
    p->opts = opts;
    p->rng = &rng;
    p->lookup = std::move(lookup);
    p->done = std::move(done);
    p->start();
}

}  // namespace sluice::dns
