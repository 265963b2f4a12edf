#pragma once
// A raw mbedTLS endpoint's transport in memory, for tests and benchmarks that drive a
// handshake byte for byte against our TlsStream: `out` collects what the endpoint sends,
// `in` holds what it has yet to read (WANT_READ when empty).
// mbedtls_ssl_set_bio(&ssl, &bio, MemBio::send, MemBio::recv, nullptr).

#include <mbedtls/ssl.h>

#include <algorithm>
#include <cstring>
#include <string>

namespace sluice::test_support {

struct MemBio {
    std::string in, out;

    static int send(void* ctx, const unsigned char* b, std::size_t n) {
        static_cast<MemBio*>(ctx)->out.append(reinterpret_cast<const char*>(b), n);
        return static_cast<int>(n);
    }
    static int recv(void* ctx, unsigned char* b, std::size_t n) {
        auto* self = static_cast<MemBio*>(ctx);
        if (self->in.empty()) {
            return MBEDTLS_ERR_SSL_WANT_READ;
        }
        n = std::min(n, self->in.size());
        std::memcpy(b, self->in.data(), n);
        self->in.erase(0, n);
        return static_cast<int>(n);
    }
};

}  // namespace sluice::test_support
