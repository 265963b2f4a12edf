// sluicectl relay-test HOST[:PORT]: the open-relay battery against any SMTP server
// (README.md). Argument handling only; the work is in tools/relay_test.cpp.

#include <unistd.h>

#include <cstdio>
#include <iostream>

#include "common/units.hpp"
#include "tools/ctl.hpp"
#include "tools/relay_test.hpp"

namespace sluice::ctl {
namespace {

constexpr std::string_view kHelp =
    R"(usage: sluicectl relay-test HOST[:PORT] [options]

Probes an SMTP server from outside with the open-relay battery: the manual test
(a valid and a fake local sender to an outside recipient), then percent hack, bang
paths, quoted local parts, double @, source routes, the server's own address as an
IP literal in every spelling, case and trailing-dot games, null sender and HELO
spoofing. Each probe runs in its own transaction (RSET between, reconnect if the
server closed; a probe cut by 421 is retried once). DATA is never sent: after an accepted RCPT the tool sends RSET, so
running it never relays a message. STARTTLS is not used.

A probe FAILS when RCPT gets 2xx for an outside recipient; 5xx is PASS; 4xx is TEMP
(greylisting, tempfail: inconclusive); a disconnect or a timeout is ERROR.
The result holds for the address the test runs from: run it from outside the
networks the server trusts.

options:
  --local-domain DOMAIN  a domain the server serves (default: learned from the
                         greeting host name, first label dropped: mx.example.com
                         -> example.com)
  --local-sender ADDR    a valid local sender (default postmaster@DOMAIN)
  --outside ADDR         the outside recipient (default relay-test@sluice-relay-test.example;
                         a server that checks recipient domains in DNS refuses it
                         with 5.1.2 before the relay check: pass a real external
                         address you control for a conclusive test)
  --helo NAME            our EHLO name (default: our address literal, RFC 5321 4.1.4)
  --timeout DURATION     wait per reply (default 30s)
  --pace DURATION        delay between probes (default 0s)
  --json                 print a JSON object instead of the table

exit: 0 no relay accepted, 1 a relay was accepted, 2 usage error or the battery
could not start (cannot connect, no greeting, session refused).
)";

// One line on stderr even when the operator's input holds control characters.
int usage_error(std::string message) {
    for (char& c : message) {
        auto u = static_cast<unsigned char>(c);
        if (u < 0x20 || u == 0x7f) {
            c = '?';
        }
    }
    return fail("relay-test: " + message);
}

}  // namespace

int cmd_relay_test(const Args& args, const Options& opts) {
    if (wants_help(args)) {
        std::cout << kHelp;
        return kOk;
    }
    relay::RunOptions run;
    bool json = opts.json;
    std::string target;
    std::string timeout, pace;
    for (std::size_t i = 0; i < args.size(); ++i) {
        std::string error;
        const std::string& a = args[i];
        if (take_value(args, i, "--local-domain", run.local_domain, error) ||
            take_value(args, i, "--local-sender", run.local_sender, error) ||
            take_value(args, i, "--outside", run.outside, error) ||
            take_value(args, i, "--helo", run.helo, error) ||
            take_value(args, i, "--timeout", timeout, error) ||
            take_value(args, i, "--pace", pace, error)) {
            if (!error.empty()) {
                return usage_error(error);
            }
        } else if (a == "--json") {
            json = true;
        } else if (!a.empty() && a[0] == '-') {
            return usage_error("unknown option " + a + " (see sluicectl relay-test --help)");
        } else if (target.empty()) {
            target = a;
        } else {
            return usage_error("one HOST[:PORT] only, got also \"" + a + "\"");
        }
    }
    if (target.empty()) {
        return usage_error("missing HOST[:PORT] (see sluicectl relay-test --help)");
    }
    std::string error;
    auto t = relay::parse_target(target, error);
    if (!t) {
        return usage_error(error);
    }
    run.target = *t;
    if (!timeout.empty()) {
        auto d = parse_duration(timeout, error);
        if (!d || d->count() <= 0 || d->count() > 3'600'000) {
            return usage_error("--timeout: " + (d ? "must be between 1ms and 1h" : error));
        }
        run.timeout = *d;
    }
    if (!pace.empty()) {
        auto d = parse_duration(pace, error);
        if (!d || d->count() > 3'600'000) {
            return usage_error("--pace: " + (d ? "must be at most 1h" : error));
        }
        run.pace = *d;
    }
    if (!run.local_domain.empty()) {
        std::string d = relay::guess_local_domain(run.local_domain);
        // guess_local_domain drops a label from long names; here the operator's domain is
        // taken as given, only validated and lower-cased.
        if (d.empty()) {
            return usage_error("--local-domain: not a domain: \"" + run.local_domain + "\"");
        }
        std::string lowered;
        for (char c : run.local_domain) {
            lowered.push_back(c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c);
        }
        if (!lowered.empty() && lowered.back() == '.') {
            lowered.pop_back();
        }
        run.local_domain = lowered;
    }
    if (!run.local_sender.empty() && !relay::valid_plain_address(run.local_sender)) {
        return usage_error("--local-sender: expected local@domain, got \"" + run.local_sender +
                           "\"");
    }
    if (!relay::valid_plain_address(run.outside)) {
        return usage_error("--outside: expected local@domain, got \"" + run.outside + "\"");
    }
    for (char c : run.helo) {
        if (static_cast<unsigned char>(c) <= ' ' || static_cast<unsigned char>(c) >= 0x7f) {
            return usage_error("--helo: no spaces or control characters");
        }
    }

    relay::ProgressFn progress;
    if (!json && ::isatty(STDERR_FILENO)) {
        progress = [](const relay::ProbeResult& r, std::size_t i, std::size_t n) {
            std::fprintf(stderr, "\r\033[K[%zu/%zu] %s %s", i + 1, n, r.probe.name.c_str(),
                         std::string(relay::verdict_name(r.verdict)).c_str());
            if (i + 1 == n) {
                std::fprintf(stderr, "\r\033[K");
            }
        };
    }
    relay::RunReport report = relay::run_battery(run, progress);
    if (!report.start_error.empty()) {
        if (json) {
            std::cout << relay::format_json(report);
        }
        return usage_error(report.start_error);
    }
    std::cout << (json ? relay::format_json(report) : relay::format_table(report));
    std::cout.flush();
    return relay::exit_code(report);
}

}  // namespace sluice::ctl
