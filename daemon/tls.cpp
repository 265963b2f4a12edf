#include "daemon/tls.hpp"

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/error.h>
#include <mbedtls/pk.h>
#include <mbedtls/ssl.h>
#include <mbedtls/ssl_ciphersuites.h>
#include <mbedtls/ssl_ticket.h>
#include <mbedtls/x509_crt.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <list>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace sluice::tls {

namespace {

// ECDHE with AEAD only, server preference order (mbedTLS 2.28 honours the server's order
// unless built with MBEDTLS_SSL_SRV_RESPECT_CLIENT_PREFERENCE, which Debian's is not).
// Suites the build lacks, or whose certificate type we do not have, are skipped by mbedTLS.
const int kSuites[] = {
    MBEDTLS_TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    MBEDTLS_TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    MBEDTLS_TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    MBEDTLS_TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    MBEDTLS_TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    MBEDTLS_TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    0,
};

// ECDHE groups. A server in mbedTLS 2.28 takes the first group of the CLIENT's list that is
// also here, so this order only steers our own client. X25519 first: in a handshake it is
// the cheaper one (bench/tls_bench.cpp: about 13% less server CPU per full handshake than
// P-256), because mbedTLS loads a fresh P-256 group for every handshake and rebuilds its
// fixed-point comb table each time (+330 us), while X25519 needs none.
const mbedtls_ecp_group_id kCurves[] = {
    MBEDTLS_ECP_DP_CURVE25519,
    MBEDTLS_ECP_DP_SECP256R1,
    MBEDTLS_ECP_DP_SECP384R1,
    MBEDTLS_ECP_DP_NONE,
};

// Signature hashes for ServerKeyExchange and certificate verification: no SHA-1/SHA-224.
const int kSigHashes[] = {MBEDTLS_MD_SHA256, MBEDTLS_MD_SHA384, MBEDTLS_MD_SHA512, MBEDTLS_MD_NONE};

constexpr std::size_t kMinRsaBits = 2048;
constexpr std::size_t kReadChunk = 16384;  // one TLS record's plaintext at most

std::string mbedtls_error(int code) {
    char buf[160];
    mbedtls_strerror(code, buf, sizeof buf);
    char hex[16];
    std::snprintf(hex, sizeof hex, "-0x%04x", static_cast<unsigned>(-code));
    return std::string(buf) + " (" + hex + ")";
}

// One DRBG per thread, seeded from the OS on first use in that thread: the shards never
// share a lock for randomness (mbedTLS would serialise a shared context on its mutex).
struct ThreadRng {
    mbedtls_entropy_context entropy;
    mbedtls_ctr_drbg_context drbg;
    int seed_error = 0;

    ThreadRng() {
        mbedtls_entropy_init(&entropy);
        mbedtls_ctr_drbg_init(&drbg);
        const void* self = this;  // personalisation only; the entropy comes from the OS
        seed_error = mbedtls_ctr_drbg_seed(
            &drbg, mbedtls_entropy_func, &entropy,
            static_cast<const unsigned char*>(static_cast<const void*>(&self)), sizeof self);
    }
    ~ThreadRng() {
        mbedtls_ctr_drbg_free(&drbg);
        mbedtls_entropy_free(&entropy);
    }
    ThreadRng(const ThreadRng&) = delete;
    ThreadRng& operator=(const ThreadRng&) = delete;
};

int thread_rng(void*, unsigned char* out, std::size_t len) {
    thread_local ThreadRng rng;
    if (rng.seed_error != 0) {
        return rng.seed_error;
    }
    while (len > 0) {
        std::size_t n = std::min<std::size_t>(len, MBEDTLS_CTR_DRBG_MAX_REQUEST);
        if (int r = mbedtls_ctr_drbg_random(&rng.drbg, out, n); r != 0) {
            return r;
        }
        out += n;
        len -= n;
    }
    return 0;
}

// The process-wide ticket keys. Held by every server config; rebuilt only when no config
// is left (which never happens in a running daemon: the next config is loaded before the
// previous one is released).
class TicketKeys {
  public:
    TicketKeys() { mbedtls_ssl_ticket_init(&ctx_); }
    ~TicketKeys() { mbedtls_ssl_ticket_free(&ctx_); }
    TicketKeys(const TicketKeys&) = delete;
    TicketKeys& operator=(const TicketKeys&) = delete;

    int setup() {
        return mbedtls_ssl_ticket_setup(&ctx_, thread_rng, nullptr, MBEDTLS_CIPHER_AES_256_GCM,
                                        static_cast<std::uint32_t>(kTicketLifetime.count()));
    }
    mbedtls_ssl_ticket_context* ctx() { return &ctx_; }

  private:
    mbedtls_ssl_ticket_context ctx_;
};

std::shared_ptr<TicketKeys> process_ticket_keys(std::string& error) {
    static std::mutex mutex;
    static std::weak_ptr<TicketKeys> current;
    std::lock_guard<std::mutex> lock(mutex);
    if (auto keys = current.lock()) {
        return keys;
    }
    auto keys = std::make_shared<TicketKeys>();
    if (int r = keys->setup(); r != 0) {
        error = "session ticket setup: " + mbedtls_error(r);
        return nullptr;
    }
    current = keys;
    return keys;
}

std::shared_ptr<SessionCache> process_session_cache() {
    static std::mutex mutex;
    static std::weak_ptr<SessionCache> current;
    std::lock_guard<std::mutex> lock(mutex);
    if (auto cache = current.lock()) {
        return cache;
    }
    auto cache = std::make_shared<SessionCache>(kSessionCacheEntries, kSessionCacheLifetime);
    current = cache;
    return cache;
}

std::string x509_time(const mbedtls_x509_time& t) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02dZ", t.year, t.mon, t.day, t.hour,
                  t.min, t.sec);
    return buf;
}

bool is_ip_literal(const std::string& name) {
    return !name.empty() && (name.find(':') != std::string::npos ||
                             name.find_first_not_of("0123456789.") == std::string::npos);
}

void apply_common(mbedtls_ssl_config& conf) {
    // Debian's mbedTLS 2.28 defaults accept a TLS 1.0 client; pin 1.2 at both ends.
    mbedtls_ssl_conf_min_version(&conf, MBEDTLS_SSL_MAJOR_VERSION_3, MBEDTLS_SSL_MINOR_VERSION_3);
    mbedtls_ssl_conf_max_version(&conf, MBEDTLS_SSL_MAJOR_VERSION_3, MBEDTLS_SSL_MINOR_VERSION_3);
    mbedtls_ssl_conf_ciphersuites(&conf, kSuites);
    mbedtls_ssl_conf_curves(&conf, kCurves);
    mbedtls_ssl_conf_sig_hashes(&conf, kSigHashes);
    mbedtls_ssl_conf_rng(&conf, thread_rng, nullptr);
    mbedtls_ssl_conf_renegotiation(&conf, MBEDTLS_SSL_RENEGOTIATION_DISABLED);
    mbedtls_ssl_conf_legacy_renegotiation(&conf, MBEDTLS_SSL_LEGACY_NO_RENEGOTIATION);
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Configs

struct TlsServerConfig::Impl {
    std::shared_ptr<TicketKeys> tickets;
    std::shared_ptr<SessionCache> sessions;
    mbedtls_x509_crt chain;
    mbedtls_pk_context key;
    mbedtls_ssl_config conf;
    std::string summary;

    Impl() {
        mbedtls_x509_crt_init(&chain);
        mbedtls_pk_init(&key);
        mbedtls_ssl_config_init(&conf);
    }
    ~Impl() {
        mbedtls_ssl_config_free(&conf);  // refers to chain, key, tickets and sessions
        mbedtls_pk_free(&key);
        mbedtls_x509_crt_free(&chain);
    }
};

TlsServerConfig::TlsServerConfig() : impl_(std::make_unique<Impl>()) {}
TlsServerConfig::~TlsServerConfig() = default;

const std::string& TlsServerConfig::summary() const {
    return impl_->summary;
}

namespace {

// Loads and checks the chain and key; "" when good.
std::string load_chain_and_key(TlsServerConfig::Impl& m, const std::string& cert_path,
                               const std::string& key_path) {
    int r = mbedtls_x509_crt_parse_file(&m.chain, cert_path.c_str());
    if (r < 0) {
        return cert_path + ": " + mbedtls_error(r);
    }
    if (r > 0) {
        return cert_path + ": " + std::to_string(r) + " certificate(s) could not be parsed";
    }
    if (m.chain.version == 0) {
        return cert_path + ": no certificate";
    }
    r = mbedtls_pk_parse_keyfile(&m.key, key_path.c_str(), nullptr);
    if (r != 0) {
        return key_path + ": " + mbedtls_error(r);
    }
    if (r = mbedtls_pk_check_pair(&m.chain.pk, &m.key); r != 0) {
        return key_path + ": the key does not match the certificate in " + cert_path;
    }
    switch (mbedtls_pk_get_type(&m.key)) {
        case MBEDTLS_PK_RSA:
            if (mbedtls_pk_get_bitlen(&m.key) < kMinRsaBits) {
                return key_path + ": RSA key of " + std::to_string(mbedtls_pk_get_bitlen(&m.key)) +
                       " bits (at least 2048 needed)";
            }
            break;
        case MBEDTLS_PK_ECKEY: {
            mbedtls_ecp_group_id id = mbedtls_pk_ec(m.key)->grp.id;
            if (id != MBEDTLS_ECP_DP_SECP256R1 && id != MBEDTLS_ECP_DP_SECP384R1 &&
                id != MBEDTLS_ECP_DP_SECP521R1) {
                return key_path + ": EC key on an unsupported curve (use P-256 or P-384)";
            }
            break;
        }
        default:
            return key_path + ": unsupported key type (use ECDSA P-256/P-384 or RSA >= 2048)";
    }
    // Each certificate after the leaf must be the issuer of the one before it: a chain out
    // of order fails verification at some clients only, so refuse it here.
    int index = 1;
    for (const mbedtls_x509_crt* c = &m.chain; c->next != nullptr && c->next->version != 0;
         c = c->next, ++index) {
        const mbedtls_x509_buf& issuer = c->issuer_raw;
        const mbedtls_x509_buf& subject = c->next->subject_raw;
        if (issuer.len != subject.len || std::memcmp(issuer.p, subject.p, issuer.len) != 0) {
            return cert_path + ": certificate " + std::to_string(index + 1) +
                   " in the chain did not issue certificate " + std::to_string(index) +
                   " (leaf first, then each issuer)";
        }
    }
    char dn[256];
    if (mbedtls_x509_dn_gets(dn, sizeof dn, &m.chain.subject) < 0) {
        dn[0] = '\0';
    }
    m.summary = std::string("subject=\"") + dn + "\" key=" + mbedtls_pk_get_name(&m.key) + "-" +
                std::to_string(mbedtls_pk_get_bitlen(&m.key)) + " chain=" + std::to_string(index) +
                " not_after=" + x509_time(m.chain.valid_to);
    return {};
}

// mbedtls_ssl_ticket_parse, noting on the stream being driven that it resumed: mbedTLS
// 2.28 has no public "was this handshake resumed" getter, and a ticket that parses is
// exactly the condition under which its server resumes (ssl_parse_session_ticket_ext).
thread_local TlsChannel::Impl* t_driving = nullptr;
int parse_ticket(void* p_ticket, mbedtls_ssl_session* session, unsigned char* buf, std::size_t len);

}  // namespace

std::shared_ptr<const TlsServerConfig> TlsServerConfig::load(const std::string& cert_path,
                                                             const std::string& key_path,
                                                             std::string& error) {
    std::shared_ptr<TlsServerConfig> cfg(new TlsServerConfig());
    Impl& m = *cfg->impl_;
    if (error = load_chain_and_key(m, cert_path, key_path); !error.empty()) {
        return nullptr;
    }
    m.tickets = process_ticket_keys(error);
    if (!m.tickets) {
        return nullptr;
    }
    int r = mbedtls_ssl_config_defaults(&m.conf, MBEDTLS_SSL_IS_SERVER,
                                        MBEDTLS_SSL_TRANSPORT_STREAM, MBEDTLS_SSL_PRESET_DEFAULT);
    if (r != 0) {
        error = "TLS config: " + mbedtls_error(r);
        return nullptr;
    }
    apply_common(m.conf);
    mbedtls_ssl_conf_authmode(&m.conf, MBEDTLS_SSL_VERIFY_NONE);  // no client certificates
    if (r = mbedtls_ssl_conf_own_cert(&m.conf, &m.chain, &m.key); r != 0) {
        error = "TLS config: " + mbedtls_error(r);
        return nullptr;
    }
    mbedtls_ssl_conf_session_tickets_cb(&m.conf, mbedtls_ssl_ticket_write, parse_ticket,
                                        m.tickets->ctx());
    m.sessions = process_session_cache();
    mbedtls_ssl_conf_session_cache(&m.conf, m.sessions.get(), SessionCache::get, SessionCache::set);
    return cfg;
}

struct TlsClientConfig::Impl {
    mbedtls_x509_crt ca;
    mbedtls_ssl_config conf;
    bool has_ca = false;

    Impl() {
        mbedtls_x509_crt_init(&ca);
        mbedtls_ssl_config_init(&conf);
    }
    ~Impl() {
        mbedtls_ssl_config_free(&conf);
        mbedtls_x509_crt_free(&ca);
    }
};

TlsClientConfig::TlsClientConfig() : impl_(std::make_unique<Impl>()) {}
TlsClientConfig::~TlsClientConfig() = default;
bool TlsClientConfig::has_ca() const {
    return impl_->has_ca;
}

std::shared_ptr<const TlsClientConfig> TlsClientConfig::load(const std::string& ca_file,
                                                             std::string& error) {
    std::shared_ptr<TlsClientConfig> cfg(new TlsClientConfig());
    Impl& m = *cfg->impl_;
    if (!ca_file.empty()) {
        int r = mbedtls_x509_crt_parse_file(&m.ca, ca_file.c_str());
        if (r < 0) {
            error = ca_file + ": " + mbedtls_error(r);
            return nullptr;
        }
        if (r > 0 || m.ca.version == 0) {
            error = ca_file + ": not a PEM bundle of CA certificates";
            return nullptr;
        }
        m.has_ca = true;
    }
    int r = mbedtls_ssl_config_defaults(&m.conf, MBEDTLS_SSL_IS_CLIENT,
                                        MBEDTLS_SSL_TRANSPORT_STREAM, MBEDTLS_SSL_PRESET_DEFAULT);
    if (r != 0) {
        error = "TLS config: " + mbedtls_error(r);
        return nullptr;
    }
    apply_common(m.conf);
    if (m.has_ca) {
        // OPTIONAL: the handshake records the result and each stream decides (verify flag).
        mbedtls_ssl_conf_authmode(&m.conf, MBEDTLS_SSL_VERIFY_OPTIONAL);
        mbedtls_ssl_conf_ca_chain(&m.conf, &m.ca, nullptr);
    } else {
        mbedtls_ssl_conf_authmode(&m.conf, MBEDTLS_SSL_VERIFY_NONE);
    }
    return cfg;
}

// ---------------------------------------------------------------------------------------
// Streams

struct TlsChannel::Impl {
    std::shared_ptr<const void> config;  // outlives `ssl`, which points into it
    mbedtls_ssl_context ssl;
    // The caller's ciphertext during receive(), not copied: mbedTLS keeps a partial record
    // in its own buffer, and we read until it asks for more, so nothing is left over.
    std::string_view feed;
    std::string out;
    std::string error;
    bool ready = false;  // mbedtls_ssl_setup succeeded
    bool done = false;
    bool resumed = false;
    bool closed = false;
    bool failed = false;
    bool verify = false;  // client: the peer's certificate must verify

    Impl() { mbedtls_ssl_init(&ssl); }
    ~Impl() { mbedtls_ssl_free(&ssl); }

    TlsChannel::Status fail(std::string text) {
        failed = true;
        error = std::move(text);
        return Status::error;
    }
    TlsChannel::Status fail_code(int code) { return fail(mbedtls_error(code)); }

    bool setup(const mbedtls_ssl_config* conf) {
        if (int r = mbedtls_ssl_setup(&ssl, conf); r != 0) {
            fail_code(r);
            return false;
        }
        mbedtls_ssl_set_bio(&ssl, this, bio_send, bio_recv, nullptr);
        ready = true;
        return true;
    }

    // The BIO: our buffers stand in for the socket. Sending never blocks; receiving says
    // WANT_READ when the caller has fed nothing more.
    static int bio_send(void* ctx, const unsigned char* buf, std::size_t len) {
        auto* self = static_cast<Impl*>(ctx);
        self->out.append(reinterpret_cast<const char*>(buf), len);
        return static_cast<int>(len);
    }
    static int bio_recv(void* ctx, unsigned char* buf, std::size_t len) {
        auto* self = static_cast<Impl*>(ctx);
        if (self->feed.empty()) {
            return MBEDTLS_ERR_SSL_WANT_READ;
        }
        std::size_t n = std::min(self->feed.size(), len);
        std::memcpy(buf, self->feed.data(), n);
        self->feed.remove_prefix(n);
        return static_cast<int>(n);
    }

    // Runs drive() over `cipher`. Bytes after a close_notify or a fatal error are dropped.
    Status drive_over(std::string_view cipher, std::string& plain) {
        feed = cipher;
        Status s = drive(plain);
        if (!feed.empty() && (s == Status::ok || s == Status::want_more)) {
            s = fail("TLS input left unread");  // cannot happen (see `feed`); never drop data
        }
        feed = {};
        return s;
    }

    Status handshake() {
        t_driving = this;
        int r = mbedtls_ssl_handshake(&ssl);
        t_driving = nullptr;
        if (r == MBEDTLS_ERR_SSL_WANT_READ || r == MBEDTLS_ERR_SSL_WANT_WRITE) {
            return Status::want_more;
        }
        if (r != 0) {
            return fail_code(r);
        }
        if (verify) {
            if (std::uint32_t flags = mbedtls_ssl_get_verify_result(&ssl); flags != 0) {
                char info[512];
                int n = mbedtls_x509_crt_verify_info(info, sizeof info, "", flags);
                std::string text = n > 0 ? std::string(info, static_cast<std::size_t>(n)) : "";
                std::replace(text.begin(), text.end(), '\n', ';');
                while (!text.empty() && text.back() == ';') {
                    text.pop_back();
                }
                mbedtls_ssl_send_alert_message(&ssl, MBEDTLS_SSL_ALERT_LEVEL_FATAL,
                                               MBEDTLS_SSL_ALERT_MSG_BAD_CERT);
                return fail("certificate verification failed: " + text);
            }
        }
        done = true;
        return Status::ok;
    }

    Status drive(std::string& plain) {
        if (!done) {
            if (Status s = handshake(); s != Status::ok) {
                return s;
            }
        }
        unsigned char buf[kReadChunk];
        for (;;) {
            int r = mbedtls_ssl_read(&ssl, buf, sizeof buf);
            if (r > 0) {
                plain.append(reinterpret_cast<const char*>(buf), static_cast<std::size_t>(r));
                continue;
            }
            if (r == MBEDTLS_ERR_SSL_WANT_READ || r == MBEDTLS_ERR_SSL_WANT_WRITE) {
                return Status::ok;
            }
            if (r == 0 || r == MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY) {
                closed = true;
                return Status::closed;
            }
            return fail_code(r);
        }
    }
};

namespace {

int parse_ticket(void* p_ticket, mbedtls_ssl_session* session, unsigned char* buf,
                 std::size_t len) {
    int r = mbedtls_ssl_ticket_parse(p_ticket, session, buf, len);
    if (r == 0 && t_driving != nullptr) {
        t_driving->resumed = true;
    }
    return r;
}

}  // namespace

int SessionCache::set(void* p, const mbedtls_ssl_session* session) {
    auto* self = static_cast<SessionCache*>(p);
    if (session->id_len == 0 || self->max_entries_ == 0) {
        return 0;
    }
    std::size_t len = 0;
    int r = mbedtls_ssl_session_save(session, nullptr, 0, &len);
    if (r != MBEDTLS_ERR_SSL_BUFFER_TOO_SMALL) {
        return r;
    }
    std::vector<unsigned char> blob(len);
    if (r = mbedtls_ssl_session_save(session, blob.data(), blob.size(), &len); r != 0) {
        return r;
    }
    std::string id(reinterpret_cast<const char*>(session->id), session->id_len);
    std::lock_guard<std::mutex> lock(self->mutex_);
    if (auto it = self->map_.find(id); it != self->map_.end()) {
        self->lru_.erase(it->second.lru);
        self->map_.erase(it);
    }
    while (self->map_.size() >= self->max_entries_) {
        self->map_.erase(self->lru_.back());
        self->lru_.pop_back();
    }
    self->lru_.push_front(id);
    self->map_.emplace(std::move(id),
                       Entry{std::move(blob), Clock::now() + self->lifetime_, self->lru_.begin()});
    return 0;
}

std::size_t SessionCache::size() {
    std::lock_guard<std::mutex> lock(mutex_);
    return map_.size();
}

int SessionCache::get(void* p, mbedtls_ssl_session* session) {
    auto* self = static_cast<SessionCache*>(p);
    if (session->id_len == 0) {
        return 1;
    }
    std::string id(reinterpret_cast<const char*>(session->id), session->id_len);
    std::vector<unsigned char> blob;
    {
        std::lock_guard<std::mutex> lock(self->mutex_);
        auto it = self->map_.find(id);
        if (it == self->map_.end()) {
            return 1;
        }
        if (Clock::now() >= it->second.expires) {
            self->lru_.erase(it->second.lru);
            self->map_.erase(it);
            return 1;
        }
        self->lru_.splice(self->lru_.begin(), self->lru_, it->second.lru);
        blob = it->second.blob;
    }
    // mbedtls_ssl_session_load wants a session with nothing allocated: `session` holds
    // only the ID here (ssl_check_id_based_session_resumption in ssl_srv.c).
    if (mbedtls_ssl_session_load(session, blob.data(), blob.size()) != 0) {
        return 1;
    }
    // mbedTLS resumes only when the cached suite and compression are the ones negotiated
    // for this ClientHello; note the resumption under exactly that condition.
    if (t_driving != nullptr) {
        const mbedtls_ssl_session* negotiating = t_driving->ssl.session_negotiate;
        if (negotiating != nullptr && negotiating->ciphersuite == session->ciphersuite &&
            negotiating->compression == session->compression) {
            t_driving->resumed = true;
        }
    }
    return 0;
}

TlsChannel::TlsChannel() : impl_(std::make_unique<Impl>()) {}
TlsChannel::~TlsChannel() = default;

TlsChannel::Status TlsChannel::receive(std::string_view cipher, std::string& plain) {
    Impl& m = *impl_;
    if (m.failed || !m.ready) {
        return Status::error;
    }
    if (m.closed) {
        return Status::closed;
    }
    return m.drive_over(cipher, plain);
}

TlsChannel::Status TlsChannel::send(std::string_view plain) {
    Impl& m = *impl_;
    if (m.failed || !m.ready) {
        return Status::error;
    }
    if (m.closed) {
        return Status::closed;
    }
    if (!m.done) {
        m.error = "send before the TLS handshake is done";
        return Status::error;
    }
    const auto* p = reinterpret_cast<const unsigned char*>(plain.data());
    std::size_t left = plain.size();
    while (left > 0) {
        int r = mbedtls_ssl_write(&m.ssl, p, left);
        if (r <= 0) {
            // Our BIO never blocks, so WANT_WRITE cannot happen; anything else is fatal.
            return m.fail_code(r == 0 ? MBEDTLS_ERR_SSL_INTERNAL_ERROR : r);
        }
        p += r;
        left -= static_cast<std::size_t>(r);
    }
    return Status::ok;
}

std::string& TlsChannel::outbox() {
    return impl_->out;
}

void TlsChannel::close_notify() {
    Impl& m = *impl_;
    if (m.ready && m.done && !m.failed) {
        mbedtls_ssl_close_notify(&m.ssl);
    }
}

bool TlsChannel::handshake_done() const {
    return impl_->done;
}

std::string TlsChannel::version() const {
    return impl_->done ? mbedtls_ssl_get_version(&impl_->ssl) : "";
}

std::string TlsChannel::cipher() const {
    const char* name = impl_->done ? mbedtls_ssl_get_ciphersuite(&impl_->ssl) : nullptr;
    return name != nullptr ? name : "";
}

bool TlsChannel::resumed() const {
    return impl_->resumed;
}

std::string TlsChannel::error() const {
    return impl_->error;
}

TlsStream::TlsStream(std::shared_ptr<const TlsServerConfig> cfg) {
    if (!cfg) {
        impl_->fail("no TLS server configuration");
        return;
    }
    const mbedtls_ssl_config* conf = &cfg->impl().conf;
    impl_->config = std::move(cfg);
    impl_->setup(conf);
}

struct TlsSession::Impl {
    mbedtls_ssl_session session;
    Impl() { mbedtls_ssl_session_init(&session); }
    ~Impl() { mbedtls_ssl_session_free(&session); }
};

TlsSession::TlsSession() : impl_(std::make_unique<Impl>()) {}
TlsSession::~TlsSession() = default;

std::shared_ptr<const TlsSession> TlsClientStream::session() const {
    const Impl& m = *impl_;
    if (!m.done || m.failed) {
        return nullptr;
    }
    std::shared_ptr<TlsSession> saved(new TlsSession());
    if (mbedtls_ssl_get_session(&m.ssl, &saved->impl_->session) != 0) {
        return nullptr;
    }
    return saved;
}

TlsClientStream::TlsClientStream(std::shared_ptr<const TlsClientConfig> cfg,
                                 const std::string& server_name, bool verify,
                                 std::shared_ptr<const TlsSession> resume) {
    Impl& m = *impl_;
    if (!cfg) {
        m.fail("no TLS client configuration");
        return;
    }
    if (verify && !cfg->has_ca()) {
        m.fail("certificate verification needs a CA file");
        return;
    }
    if (verify && (server_name.empty() || is_ip_literal(server_name))) {
        m.fail("certificate verification needs a host name, not \"" + server_name + "\"");
        return;
    }
    const mbedtls_ssl_config* conf = &cfg->impl().conf;
    m.config = std::move(cfg);
    if (!m.setup(conf)) {
        return;
    }
    m.verify = verify;
    // SNI (RFC 6066 §3) carries host names only, never address literals.
    if (!server_name.empty() && !is_ip_literal(server_name)) {
        if (int r = mbedtls_ssl_set_hostname(&m.ssl, server_name.c_str()); r != 0) {
            m.fail_code(r);
            return;
        }
    }
    if (resume) {
        // Copies the session; a stale or foreign one only costs a full handshake.
        if (int r = mbedtls_ssl_set_session(&m.ssl, &resume->impl().session); r != 0) {
            m.fail_code(r);
            return;
        }
    }
    m.handshake();  // writes the ClientHello into outbox()
}

}  // namespace sluice::tls
