#pragma once
// Builds DNS responses byte by byte for the parser tests (RFC 1035 §4.1), including the
// broken ones a hostile server could send.

#include <cstdint>
#include <string>
#include <vector>

namespace sluice::dns::test {

struct Wire {
    std::string b;

    Wire& u8(unsigned v) {
        b.push_back(static_cast<char>(v & 0xFF));
        return *this;
    }
    Wire& u16(unsigned v) { return u8(v >> 8).u8(v); }
    Wire& u32(std::uint32_t v) { return u16(v >> 16).u16(v & 0xFFFF); }
    Wire& name(const std::string& n) {
        std::size_t start = 0;
        while (start < n.size()) {
            auto dot = n.find('.', start);
            if (dot == std::string::npos) {
                dot = n.size();
            }
            u8(static_cast<unsigned>(dot - start));
            b += n.substr(start, dot - start);
            start = dot + 1;
        }
        return u8(0);
    }
    Wire& ptr(unsigned offset) { return u16(0xC000 | offset); }

    // Header: id, flags (QR set), counts.
    static Wire header(unsigned rcode, unsigned qd, unsigned an, unsigned ns, bool tc = false) {
        Wire w;
        w.u16(0x1234).u16(0x8180 | (tc ? 0x0200 : 0) | rcode).u16(qd).u16(an).u16(ns).u16(0);
        return w;
    }
    Wire& question(const std::string& n, unsigned type) { return name(n).u16(type).u16(1); }
    // A record whose owner is a pointer to the question name (offset 12).
    Wire& rr_mx(unsigned owner_ptr, std::uint32_t ttl, unsigned pref, const std::string& host) {
        ptr(owner_ptr).u16(15).u16(1).u32(ttl);
        Wire rd;
        rd.u16(pref).name(host);
        u16(static_cast<unsigned>(rd.b.size()));
        b += rd.b;
        return *this;
    }
    Wire& rr_a(const std::string& owner, std::uint32_t ttl, unsigned a, unsigned b2, unsigned c,
               unsigned d) {
        name(owner).u16(1).u16(1).u32(ttl).u16(4).u8(a).u8(b2).u8(c).u8(d);
        return *this;
    }
    Wire& rr_cname(const std::string& owner, std::uint32_t ttl, const std::string& target) {
        name(owner).u16(5).u16(1).u32(ttl);
        Wire rd;
        rd.name(target);
        u16(static_cast<unsigned>(rd.b.size()));
        b += rd.b;
        return *this;
    }
    Wire& rr_soa(const std::string& owner, std::uint32_t ttl, std::uint32_t minimum) {
        name(owner).u16(6).u16(1).u32(ttl);
        Wire rd;
        rd.name("ns." + owner).name("admin." + owner).u32(1).u32(2).u32(3).u32(4).u32(minimum);
        u16(static_cast<unsigned>(rd.b.size()));
        b += rd.b;
        return *this;
    }
};

}  // namespace sluice::dns::test
