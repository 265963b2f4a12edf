// libFuzzer driver for policy::parse_path, the open-relay guard's parser (policy/address.hpp).
// Invariants: no input crashes it; a parsed path used exactly its bracketed text (consumed
// ends at a '>'), stays within the RFC 5321 §4.5.3.1 limits, and its canonical form is not
// longer than the text sent (see policy/address.hpp for the one exception) and parses again to the same address (canonicalisation is a
// fixed point, so the policy decides on exactly what is forwarded).
#include <cstdint>
#include <cstdlib>
#include <string>

#include "policy/address.hpp"

namespace {

bool same(const sluice::policy::Address& a, const sluice::policy::Address& b) {
    return a.local == b.local && a.domain == b.domain && a.null == b.null &&
           a.postmaster_only == b.postmaster_only && a.quoted_local == b.quoted_local &&
           a.ip_literal == b.ip_literal && a.utf8 == b.utf8;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    using namespace sluice::policy;
    if (size == 0) {
        return 0;
    }
    // The first byte picks the flags: reverse path or forward path, SMTPUTF8 or not.
    bool reverse = (data[0] & 1) != 0;
    bool utf8 = (data[0] & 2) != 0;
    std::string_view text(reinterpret_cast<const char*>(data + 1), size - 1);
    ParsedPath p = parse_path(text, reverse, utf8);
    if (!p.ok()) {
        if (p.consumed != 0 || path_error_name(p.error).empty()) {
            std::abort();
        }
        (void)path_error_reply(p.error, reverse);
        return 0;
    }
    if (p.consumed < 2 || p.consumed > text.size() || text[0] != '<' ||
        text[p.consumed - 1] != '>') {
        std::abort();
    }
    const Address& a = p.address;
    if (a.local.size() > limits::local_part || a.domain.size() > limits::domain) {
        std::abort();
    }
    if ((a.null && !reverse) || (a.postmaster_only && reverse)) {
        std::abort();
    }
    // Never longer than the text sent, but for a single zero group written "::" in an IPv6
    // literal, which RFC 5952 §4.2.2 writes as "0" (one octet more).
    std::string canonical = a.str();
    bool v6 = a.ip_literal && a.domain.rfind("[IPv6:", 0) == 0;
    if (canonical.size() + 2 > p.consumed + (v6 ? 1 : 0)) {
        std::abort();
    }
    if (!utf8 && a.utf8) {
        std::abort();
    }
    // The canonical form is a fixed point.
    ParsedPath again = parse_path("<" + canonical + ">", reverse, utf8);
    if (!again.ok() || !same(again.address, a) || again.address.had_source_route) {
        std::abort();
    }
    return 0;
}
