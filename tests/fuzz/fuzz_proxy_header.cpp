// libFuzzer driver for the PROXY protocol header parser (daemon/proxy/proxy_header).
// Invariants: the reader never holds more than kMaxHeaderSize bytes while it waits; the
// verdict does not depend on how the bytes were cut (fed in pieces == parsed whole); a
// header is never longer than its format allows; the bytes after it come back exactly;
// and no input crashes or hangs the parser.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "daemon/proxy/proxy_header.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    using namespace sluice::proxy;
    if (size == 0) {
        return 0;
    }
    // The first byte picks the fragment size, like a socket delivering pieces.
    std::size_t step = 1 + data[0] % 64;
    std::string_view input(reinterpret_cast<const char*>(data + 1), size - 1);
    Result whole = parse(input);
    Reader reader;
    Result fed;
    std::size_t pos = 0;
    for (; pos < input.size(); pos += step) {
        fed = reader.feed(input.substr(pos, step));
        if (fed.status != Status::need_more) {
            pos += step;
            break;
        }
    }
    if (fed.status != whole.status || fed.error != whole.error) {
        std::abort();
    }
    if (whole.status == Status::need_more && input.size() >= limits::kMaxHeaderSize) {
        std::abort();  // a waiting reader would hold more than its bound
    }
    if (whole.status == Status::done) {
        const std::size_t max = whole.header.version == 1 ? limits::kV1MaxLine : limits::kV2MaxSize;
        if (whole.consumed == 0 || whole.consumed > max || fed.consumed != whole.consumed ||
            fed.header.kind != whole.header.kind ||
            !(fed.header.source.ip == whole.header.source.ip) ||
            fed.header.source.port != whole.header.source.port) {
            std::abort();
        }
        std::string rest = reader.take_rest();
        if (pos < input.size()) {
            rest.append(input.substr(pos));
        }
        if (rest != input.substr(whole.consumed)) {
            std::abort();
        }
    }
    return 0;
}
