#pragma once
// TLS for SMTP sessions on the shard loops: mbedTLS 2.28 driven through an in-memory BIO.
// No sockets, no threads, no blocking: the connection layer feeds the ciphertext it read
// and writes out what a stream leaves in outbox(). Server side for inbound STARTTLS
// (RFC 3207) and implicit TLS (RFC 8314 §3.3); client side for STARTTLS to the next hop.
//
// Trust: every byte fed to a stream is hostile. Certificates and keys are the operator's
// files, but they are checked on load (the key must match the leaf certificate, each chain
// certificate must have issued the one before it, no RSA key below 2048 bits).
//
// Promises:
// - TLS 1.2 only (TLS 1.3 is compiled out of Debian's mbedTLS 2.28; TLS 1.0/1.1 are
//   refused although the library supports them), ECDHE key exchange with AEAD suites only
//   (AES-GCM, CHACHA20-POLY1305), renegotiation refused (RFC 5746 is moot), the full chain
//   as loaded is sent.
// - A TlsServerConfig is immutable once loaded and shared by every shard: a certificate
//   reload builds a new one; streams keep the config they started with (shared_ptr).
// - Session tickets (RFC 5077) come from ONE process-wide ticket context that survives
//   certificate reloads, so a client resumes on any shard. A ticket resumes for up to
//   kTicketLifetime after the full handshake that issued it; the ticket keys (AES-256-GCM,
//   random, never written anywhere) rotate as often. mbedTLS locks the context itself
//   (Debian builds it with MBEDTLS_THREADING_PTHREAD).
// - Clients that do not do tickets get a session ID (RFC 5246 §7.4.1.2; mbedTLS gives one
//   only when it issues no ticket) and resume from ONE process-wide session cache, shared
//   by all shards and certificate reloads like the ticket keys: at most
//   kSessionCacheEntries sessions (the least recently used one goes first), each resuming
//   for kSessionCacheLifetime after its full handshake. A lookup or an insert holds the
//   cache's mutex for a hash-map operation and a copy of ~150 bytes, nothing more.
// - Random numbers come from one CTR-DRBG per thread (seeded from the OS), so shards never
//   contend on a lock for them.
// - A stream allocates mbedTLS's ~37 KB only when constructed: create it when a session
//   starts TLS, not before. Streams are neither copied nor moved (mbedTLS holds `this`).
// - Nothing here throws; errors are Status values and a text from mbedtls_strerror.
//
// Driving a stream from a libuv read callback:
//     Status s = stream.receive(bytes_read, plain);   // handshake, then decryption
//     write stream.outbox() and empty it (swap it into the uv_write request: an idle
//     session then holds no buffer) ALWAYS, even on error: it may hold an alert;
//     s == want_more: wait for more bytes; ok: hand `plain` (maybe empty) to the session;
//     closed: the peer sent close_notify; error: close the connection.
// After STARTTLS, feed only bytes read after the 220 reply: whatever plaintext the client
// sent before is the caller's to discard (RFC 3207 §4.2, CVE-2011-0411).

#include <chrono>
#include <cstddef>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

struct mbedtls_ssl_session;

namespace sluice::tls {

// How long a session ticket resumes, and how often the ticket keys change.
inline constexpr std::chrono::seconds kTicketLifetime{12 * 3600};
// The session-ID cache: ~300 bytes an entry (about 3 MB when full); an hour, as senders'
// own caches keep a session (Postfix's smtp_tls_session_cache_timeout defaults to 3600s).
inline constexpr std::size_t kSessionCacheEntries = 10000;
inline constexpr std::chrono::seconds kSessionCacheLifetime{3600};

// The session-ID cache behind every TlsServerConfig (one per process, see above); public
// for its tests. Entries are mbedtls_ssl_session_save blobs: no pointers, so a lookup
// copies one out and the lock is not held while mbedTLS uses the session. A map for the
// lookup, a list for least-recently-used eviction. Thread-safe.
class SessionCache {
  public:
    using Clock = std::chrono::steady_clock;

    SessionCache(std::size_t max_entries, Clock::duration lifetime)
        : max_entries_(max_entries), lifetime_(lifetime) {}
    SessionCache(const SessionCache&) = delete;
    SessionCache& operator=(const SessionCache&) = delete;

    // mbedTLS's f_set_cache: called after a full handshake that gave out a session ID.
    static int set(void* self, const mbedtls_ssl_session* session);
    // mbedTLS's f_get_cache: `session` carries only the client's ID; filled in on a hit
    // (0), untouched on a miss (1). Marks the stream being driven as resumed when mbedTLS
    // will resume with it.
    static int get(void* self, mbedtls_ssl_session* session);

    std::size_t size();

  private:
    struct Entry {
        std::vector<unsigned char> blob;
        Clock::time_point expires;
        std::list<std::string>::iterator lru;
    };

    std::size_t max_entries_;
    Clock::duration lifetime_;
    std::mutex mutex_;
    std::unordered_map<std::string, Entry> map_;
    std::list<std::string> lru_;  // most recently used first
};

class TlsServerConfig {
  public:
    // Loads a PEM chain (leaf first, then intermediates) and its PEM private key. Never
    // throws; on failure returns nullptr and sets `error` to one line naming the file.
    static std::shared_ptr<const TlsServerConfig> load(const std::string& cert_path,
                                                       const std::string& key_path,
                                                       std::string& error);
    ~TlsServerConfig();
    TlsServerConfig(const TlsServerConfig&) = delete;
    TlsServerConfig& operator=(const TlsServerConfig&) = delete;

    // For the log at load time: "subject=\"CN=mx.example.test\" key=EC-256 chain=2
    // not_after=2027-01-01T00:00:00Z".
    const std::string& summary() const;

    struct Impl;
    const Impl& impl() const { return *impl_; }

  private:
    TlsServerConfig();
    std::unique_ptr<Impl> impl_;
};

// Settings for outbound STARTTLS (client side). Immutable, shared like the server config.
class TlsClientConfig {
  public:
    // `ca_file`: PEM bundle of trusted CAs; empty means no CA, so streams can only be made
    // with verify = false (opportunistic encryption, RFC 7435).
    static std::shared_ptr<const TlsClientConfig> load(const std::string& ca_file,
                                                       std::string& error);
    ~TlsClientConfig();
    TlsClientConfig(const TlsClientConfig&) = delete;
    TlsClientConfig& operator=(const TlsClientConfig&) = delete;

    bool has_ca() const;

    struct Impl;
    const Impl& impl() const { return *impl_; }

  private:
    TlsClientConfig();
    std::unique_ptr<Impl> impl_;
};

// What both ends share: feed ciphertext, take plaintext, drain outbox().
class TlsChannel {
  public:
    enum class Status { ok, want_more, closed, error };

    virtual ~TlsChannel();
    TlsChannel(const TlsChannel&) = delete;
    TlsChannel& operator=(const TlsChannel&) = delete;

    // Feeds ciphertext received from the socket (may be empty: just makes progress). Runs
    // the handshake while it is not done, then appends all application data now
    // decryptable to `plain`. Consumes all of `cipher` (incomplete records are kept inside).
    // ok: handshake done; want_more: handshake needs more bytes; closed: close_notify came
    // (data before it is in `plain`); error: fatal, see error(). Once closed or error, every
    // later call returns the same.
    Status receive(std::string_view cipher, std::string& plain);
    // Encrypts application data into outbox(). error before the handshake is done.
    Status send(std::string_view plain);
    // Ciphertext to write (handshake records, data records, alerts). The caller removes
    // what it wrote; write it all in one go per step (Nagle + delayed ACK would hold a second
    // small write, RFC 896).
    std::string& outbox();
    // Queues a close_notify alert in outbox() (no-op before the handshake is done).
    void close_notify();

    bool handshake_done() const;
    std::string version() const;  // "TLSv1.2"; "" before the handshake is done
    std::string cipher() const;   // "TLS-ECDHE-ECDSA-WITH-AES-128-GCM-SHA256"; ""
    bool resumed() const;         // server: the handshake resumed (ticket or session ID)
    std::string error() const;    // last error text; "" when none

    struct Impl;

  protected:
    TlsChannel();
    std::unique_ptr<Impl> impl_;
};

// Server side: one per inbound connection, created when the session starts TLS.
class TlsStream final : public TlsChannel {
  public:
    explicit TlsStream(std::shared_ptr<const TlsServerConfig> cfg);
};

// A client's session (with the server's ticket), to resume with the same next hop later
// (RFC 5077) and skip the full handshake. Immutable; may be shared between threads.
class TlsSession {
  public:
    ~TlsSession();
    TlsSession(const TlsSession&) = delete;
    TlsSession& operator=(const TlsSession&) = delete;

    struct Impl;
    const Impl& impl() const { return *impl_; }

  private:
    friend class TlsClientStream;
    TlsSession();
    std::unique_ptr<Impl> impl_;
};

// Client side: one per outbound connection, after the next hop answered 220 to STARTTLS.
// The ClientHello is in outbox() as soon as the constructor returns. `server_name` is sent
// as SNI and, with `verify`, must match the certificate, whose chain must end at a CA of
// the config; a failed check fails the handshake (error(), a bad_certificate alert) before
// any data is sent. verify = true needs a host name (mbedTLS 2.28 cannot match IP
// addresses) and a config with a CA: otherwise the stream is in error from the start.
// `resume`: a session() of an earlier stream to the same server; the server may resume it
// or fall back to a full handshake.
class TlsClientStream final : public TlsChannel {
  public:
    TlsClientStream(std::shared_ptr<const TlsClientConfig> cfg, const std::string& server_name,
                    bool verify, std::shared_ptr<const TlsSession> resume = nullptr);

    // After the handshake: this session, to resume next time; nullptr before or on error.
    std::shared_ptr<const TlsSession> session() const;
};

}  // namespace sluice::tls
