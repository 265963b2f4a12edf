// libFuzzer driver for the DATA reader. Invariants: output never exceeds the cap, output
// never contains a bare CR or LF, and "done" only ever follows CRLF "." CRLF.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "daemon/data_reader.hpp"
#include "tests/fuzz/fragments.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    using namespace sluice::smtp;
    auto fragments = sluice::fuzz::Fragments::of(data, size);
    if (!fragments) {
        return 0;
    }
    constexpr std::size_t kCap = 4096;
    DataReader r(kCap);
    std::string out;
    std::string seen = "\r\n";  // DATA's own CRLF precedes the content
    for (std::string_view chunk : *fragments) {
        auto res = r.feed(chunk, out);
        seen.append(chunk.substr(0, res.consumed));
        if (res.status == DataReader::Status::done) {
            if (seen.size() < 5 || seen.compare(seen.size() - 5, 5, "\r\n.\r\n") != 0) {
                std::abort();
            }
            break;
        }
        if (res.status != DataReader::Status::need_more) {
            break;
        }
    }
    if (out.size() > kCap) {
        std::abort();
    }
    for (std::size_t i = 0; i < out.size(); ++i) {
        bool cr = out[i] == '\r', lf = out[i] == '\n';
        if ((cr && (i + 1 >= out.size() || out[i + 1] != '\n')) && out.size() < kCap) {
            std::abort();
        }
        if (lf && (i == 0 || out[i - 1] != '\r')) {
            std::abort();
        }
    }
    return 0;
}
