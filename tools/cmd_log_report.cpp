// sluicectl log-report [FILE...]: summarises the decision log (docs/logs.md). Argument
// handling and input reading; the analysis is in tools/log_report.cpp.
//
// Input goes through zlib's gzread, which decompresses gzip (also concatenated members,
// as logrotate leaves them) and passes anything else through unchanged: `.gz` files,
// plain files and stdin are all read the same way, by content, not by file name.

#include <fcntl.h>
#include <unistd.h>
#include <zlib.h>

#include <cerrno>
#include <charconv>
#include <cstring>
#include <iostream>
#include <memory>
#include <vector>

#include "tools/ctl.hpp"
#include "tools/log_report.hpp"

namespace sluice::ctl {
namespace {

constexpr std::string_view kHelp =
    R"(usage: sluicectl log-report [options] [FILE...]

Summarises the decision log (sluiced's key=value lines on stderr / journald): the
time range, counts per decision code, denied relay attempts (D1xx, B120) by client,
client network (/24, IPv6 /64), sender and recipient domain, relays granted by weak
criteria (G106 local sender, G110 open mode) as WARNINGS, authenticated users (G108)
with unusual relay volume, connection-filter refusals (C130) by client.
Reads stdin when no FILE is given ("-" is stdin too); gzip'd input is decompressed.
Malformed or truncated lines are skipped and counted.

options:
  --since TIME        only records at or after TIME (UTC: 2026-11-22, 2026-11-22T10:00,
                      2026-11-22T10:00:00.123Z)
  --until TIME        only records before TIME
  --code CODE         only records with this decision code (repeatable; CODE,CODE too)
  --client IP|CIDR    only records whose client is inside this address or prefix
  --top N             rows per table (default 10)
  --max-keys N        distinct keys kept per table (default 10000). Memory is bounded
                      by this whatever the log size; past it a table keeps the heavy
                      hitters (Space-Saving) and marks its counts as upper bounds
  --user-min N        unusual-volume floor for authenticated users (default 100)
  --strict            exit 1 when the report has warnings
  --json              print a JSON object

A user is unusual when their G108 relay count is more than 3x the median count
per authenticated user AND more than --user-min.

exit: 0 done, 1 warnings with --strict, 2 usage error or an input cannot be opened.
A truncated gzip file is reported (read error) and what was read is counted.
)";

constexpr std::size_t kReadChunk = 1 << 20;

std::optional<std::uint64_t> parse_count(std::string_view s) {
    std::uint64_t v = 0;
    auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (ec != std::errc() || end != s.data() + s.size() || s.empty()) {
        return std::nullopt;
    }
    return v;
}

struct GzCloser {
    void operator()(gzFile f) const { gzclose(f); }
};
using GzPtr = std::unique_ptr<gzFile_s, GzCloser>;

struct Input {
    std::string name;
    GzPtr gz;
};

// Reads one input to its end into the analyzer; a read error is noted in the report.
void read_input(Input& in, logreport::Analyzer& analyzer, std::vector<char>& buf) {
    while (true) {
        int n = gzread(in.gz.get(), buf.data(), static_cast<unsigned>(buf.size()));
        if (n > 0) {
            analyzer.feed(std::string_view(buf.data(), static_cast<std::size_t>(n)));
            continue;
        }
        int err = Z_OK;
        const char* msg = gzerror(in.gz.get(), &err);
        if (n < 0 || (err != Z_OK && err != Z_STREAM_END)) {
            std::string text = in.name + ": " +
                               (err == Z_ERRNO ? std::string(std::strerror(errno))
                                               : std::string(msg != nullptr ? msg : "read error"));
            std::cerr << "sluicectl: log-report: " << text
                      << " (the report counts what was read)\n";
            analyzer.note_read_error(text);
        }
        break;
    }
    analyzer.end_of_input();
}

}  // namespace

int cmd_log_report(const Args& args, const Options& opts) {
    if (wants_help(args)) {
        std::cout << kHelp;
        return kOk;
    }
    logreport::ReportOptions ro;
    bool json = opts.json;
    bool strict = false;
    std::vector<std::string> files;
    for (std::size_t i = 0; i < args.size(); ++i) {
        std::string error, value;
        const std::string& a = args[i];
        if (take_value(args, i, "--since", value, error)) {
            auto t = error.empty() ? logreport::parse_timestamp(value) : std::nullopt;
            if (!t) {
                return fail("log-report: --since: " +
                            (error.empty()
                                 ? "bad time \"" + value + "\" (UTC, e.g. 2026-11-22T10:00:00Z)"
                                 : error));
            }
            ro.filters.since = t;
        } else if (take_value(args, i, "--until", value, error)) {
            auto t = error.empty() ? logreport::parse_timestamp(value) : std::nullopt;
            if (!t) {
                return fail("log-report: --until: " +
                            (error.empty()
                                 ? "bad time \"" + value + "\" (UTC, e.g. 2026-11-22T10:00:00Z)"
                                 : error));
            }
            ro.filters.until = t;
        } else if (take_value(args, i, "--code", value, error)) {
            if (!error.empty()) {
                return fail("log-report: " + error);
            }
            std::size_t start = 0;
            while (start <= value.size()) {
                auto comma = value.find(',', start);
                std::string code = value.substr(start, comma - start);
                for (char& c : code) {
                    c = (c >= 'a' && c <= 'z') ? static_cast<char>(c - 'a' + 'A') : c;
                }
                if (code.empty() || code.size() > 16) {
                    return fail("log-report: --code: bad code \"" + code + "\" (e.g. D111)");
                }
                ro.filters.codes.push_back(code);
                if (comma == std::string::npos) {
                    break;
                }
                start = comma + 1;
            }
        } else if (take_value(args, i, "--client", value, error)) {
            if (!error.empty()) {
                return fail("log-report: " + error);
            }
            auto c = parse_cidr(value, error);
            if (!c) {
                return fail("log-report: --client: " + error);
            }
            ro.filters.client = c;
        } else if (take_value(args, i, "--top", value, error)) {
            auto n = error.empty() ? parse_count(value) : std::nullopt;
            if (!n || *n == 0 || *n > 1'000'000) {
                return fail("log-report: --top: expected a number from 1 to 1000000");
            }
            ro.top = *n;
        } else if (take_value(args, i, "--max-keys", value, error)) {
            auto n = error.empty() ? parse_count(value) : std::nullopt;
            if (!n || *n == 0 || *n > 10'000'000) {
                return fail("log-report: --max-keys: expected a number from 1 to 10000000");
            }
            ro.max_keys = *n;
        } else if (take_value(args, i, "--user-min", value, error)) {
            auto n = error.empty() ? parse_count(value) : std::nullopt;
            if (!n) {
                return fail("log-report: --user-min: expected a number");
            }
            ro.user_min_volume = *n;
        } else if (a == "--json") {
            json = true;
        } else if (a == "--strict") {
            strict = true;
        } else if (a.size() > 1 && a[0] == '-') {
            return fail("log-report: unknown option " + a + " (see sluicectl log-report --help)");
        } else {
            files.push_back(a);
        }
    }
    if (files.empty()) {
        files.emplace_back("-");
    }

    // Open everything first: a mistyped path is a usage error before any output.
    std::vector<Input> inputs;
    for (const auto& f : files) {
        int fd = f == "-" ? ::dup(STDIN_FILENO) : ::open(f.c_str(), O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            return fail("log-report: " + f + ": " + std::strerror(errno));
        }
        gzFile gz = gzdopen(fd, "rb");
        if (gz == nullptr) {
            ::close(fd);
            return fail("log-report: " + f + ": cannot read");
        }
        gzbuffer(gz, 256 * 1024);
        inputs.push_back(Input{f == "-" ? "(stdin)" : f, GzPtr(gz)});
    }

    logreport::Analyzer analyzer(ro);
    std::vector<char> buf(kReadChunk);
    for (auto& in : inputs) {
        read_input(in, analyzer, buf);
        in.gz.reset();
    }
    std::cout << (json ? analyzer.format_json() : analyzer.format_text());
    std::cout.flush();
    if (strict && !analyzer.warnings().empty()) {
        return kProblem;
    }
    return kOk;
}

}  // namespace sluice::ctl
