// libFuzzer driver for the command scanner and parser. Invariants: the caller never holds
// more than one command line, every line is shorter than the RFC 5321 limit, and no input
// crashes or hangs the scanner.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "daemon/smtp_parser.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    using namespace sluice::smtp;
    if (size == 0) {
        return 0;
    }
    // The first byte picks the fragment size, like a socket delivering pieces.
    std::size_t step = 1 + data[0] % 64;
    std::string_view input(reinterpret_cast<const char*>(data + 1), size - 1);
    LineScanner sc;
    std::string pending;
    std::vector<Param> params;
    for (std::size_t pos = 0; pos < input.size(); pos += step) {
        pending.append(input.substr(pos, step));
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
