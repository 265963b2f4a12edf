// libFuzzer driver for the command scanner and parser. Invariants: the caller never holds
// more than one command line, every line is shorter than the RFC 5321 limit, and no input
// crashes or hangs the scanner.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "daemon/smtp_parser.hpp"
#include "tests/fuzz/fragments.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    using namespace sluice::smtp;
    auto fragments = sluice::fuzz::Fragments::of(data, size);
    if (!fragments) {
        return 0;
    }
    LineScanner sc;
    std::string pending;
    std::vector<Param> params;
    for (std::string_view piece : *fragments) {
        pending.append(piece);
        while (true) {
            auto r = sc.next(pending);
            if (r.consumed > pending.size()) {
                std::abort();
            }
            if (r.status == LineScanner::Status::line) {
                if (r.line.size() > limits::kMaxCommandLine - 2) {
                    std::abort();
                }
                auto cmd = parse_command(r.line);
                parse_params(cmd.arg, params);
            }
            pending.erase(0, r.consumed);
            if (r.status == LineScanner::Status::need_more &&
                (r.consumed == 0 || pending.empty())) {
                break;
            }
        }
        if (pending.size() > limits::kMaxCommandLine) {
            std::abort();
        }
    }
    return 0;
}
