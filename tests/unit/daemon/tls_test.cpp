// daemon/tls: server and client streams handshaking entirely in memory, with certificates
// made here by mbedTLS (a CA, an intermediate, ECDSA P-256 and RSA leaves).

#include "daemon/tls.hpp"

#include <gtest/gtest.h>
#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/pk.h>
#include <mbedtls/rsa.h>
#include <mbedtls/ssl.h>
#include <mbedtls/ssl_ciphersuites.h>
#include <mbedtls/x509_crt.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "tests/support/mem_bio.hpp"

namespace sluice::tls {
namespace {

namespace fs = std::filesystem;
using Status = TlsChannel::Status;

// --- test PKI -------------------------------------------------------------------------

struct Rng {
    mbedtls_entropy_context entropy;
    mbedtls_ctr_drbg_context drbg;
    Rng() {
        mbedtls_entropy_init(&entropy);
        mbedtls_ctr_drbg_init(&drbg);
        mbedtls_ctr_drbg_seed(&drbg, mbedtls_entropy_func, &entropy, nullptr, 0);
    }
    ~Rng() {
        mbedtls_ctr_drbg_free(&drbg);
        mbedtls_entropy_free(&entropy);
    }
};

Rng& rng() {
    static Rng r;
    return r;
}

struct Key {
    mbedtls_pk_context pk;
    Key() { mbedtls_pk_init(&pk); }
    ~Key() { mbedtls_pk_free(&pk); }
    Key(const Key&) = delete;

    static std::unique_ptr<Key> ec() {
        auto k = std::make_unique<Key>();
        mbedtls_pk_setup(&k->pk, mbedtls_pk_info_from_type(MBEDTLS_PK_ECKEY));
        EXPECT_EQ(0, mbedtls_ecp_gen_key(MBEDTLS_ECP_DP_SECP256R1, mbedtls_pk_ec(k->pk),
                                         mbedtls_ctr_drbg_random, &rng().drbg));
        return k;
    }
    static std::unique_ptr<Key> rsa(unsigned bits) {
        auto k = std::make_unique<Key>();
        mbedtls_pk_setup(&k->pk, mbedtls_pk_info_from_type(MBEDTLS_PK_RSA));
        EXPECT_EQ(0, mbedtls_rsa_gen_key(mbedtls_pk_rsa(k->pk), mbedtls_ctr_drbg_random,
                                         &rng().drbg, bits, 65537));
        return k;
    }
    std::string pem() {
        std::vector<unsigned char> buf(16000);
        EXPECT_EQ(0, mbedtls_pk_write_key_pem(&pk, buf.data(), buf.size()));
        return reinterpret_cast<const char*>(buf.data());
    }
};

std::string make_cert(Key& subject, const std::string& subject_name, Key& issuer,
                      const std::string& issuer_name, bool ca) {
    static int serial_no = 1;
    mbedtls_x509write_cert w;
    mbedtls_x509write_crt_init(&w);
    mbedtls_mpi serial;
    mbedtls_mpi_init(&serial);
    mbedtls_mpi_lset(&serial, serial_no++);
    mbedtls_x509write_crt_set_version(&w, MBEDTLS_X509_CRT_VERSION_3);
    mbedtls_x509write_crt_set_serial(&w, &serial);
    mbedtls_x509write_crt_set_validity(&w, "20240101000000", "20450101000000");
    mbedtls_x509write_crt_set_subject_name(&w, subject_name.c_str());
    mbedtls_x509write_crt_set_issuer_name(&w, issuer_name.c_str());
    mbedtls_x509write_crt_set_subject_key(&w, &subject.pk);
    mbedtls_x509write_crt_set_issuer_key(&w, &issuer.pk);
    mbedtls_x509write_crt_set_md_alg(&w, MBEDTLS_MD_SHA256);
    mbedtls_x509write_crt_set_basic_constraints(&w, ca ? 1 : 0, ca ? -1 : 0);
    std::vector<unsigned char> buf(8000);
    EXPECT_EQ(0, mbedtls_x509write_crt_pem(&w, buf.data(), buf.size(), mbedtls_ctr_drbg_random,
                                           &rng().drbg));
    mbedtls_mpi_free(&serial);
    mbedtls_x509write_crt_free(&w);
    return reinterpret_cast<const char*>(buf.data());
}

// Files in a temp dir: ca.pem, ec.pem (leaf + intermediate), ec.key, rsa.pem, rsa.key,
// other.key (matches nothing), weak_rsa.pem/.key (1024 bits), misordered.pem.
struct Pki {
    fs::path dir;
    std::string ca, ec_chain, ec_key, rsa_chain, rsa_key, other_key, weak_chain, weak_key,
        misordered, other_ca;

    Pki() {
        char tmpl[] = "/tmp/sluice-tls-test-XXXXXX";
        dir = mkdtemp(tmpl);
        auto ca_key = Key::ec();
        auto int_key = Key::ec();
        auto ec_leaf = Key::ec();
        auto rsa_leaf = Key::rsa(2048);
        auto weak_leaf = Key::rsa(1024);
        auto other = Key::ec();
        auto other_ca_key = Key::ec();
        const std::string ca_dn = "CN=Sluice Test CA,O=Sluice";
        const std::string int_dn = "CN=Sluice Test Intermediate,O=Sluice";
        const std::string leaf_dn = "CN=mx.example.test";
        std::string ca_pem = make_cert(*ca_key, ca_dn, *ca_key, ca_dn, true);
        std::string int_pem = make_cert(*int_key, int_dn, *ca_key, ca_dn, true);
        std::string ec_pem = make_cert(*ec_leaf, leaf_dn, *int_key, int_dn, false);
        std::string rsa_pem = make_cert(*rsa_leaf, leaf_dn, *ca_key, ca_dn, false);
        std::string weak_pem = make_cert(*weak_leaf, leaf_dn, *ca_key, ca_dn, false);
        std::string other_ca_pem =
            make_cert(*other_ca_key, "CN=Other CA", *other_ca_key, "CN=Other CA", true);
        ca = write("ca.pem", ca_pem);
        other_ca = write("other_ca.pem", other_ca_pem);
        ec_chain = write("ec.pem", ec_pem + int_pem);
        ec_key = write("ec.key", ec_leaf->pem());
        rsa_chain = write("rsa.pem", rsa_pem);
        rsa_key = write("rsa.key", rsa_leaf->pem());
        weak_chain = write("weak.pem", weak_pem);
        weak_key = write("weak.key", weak_leaf->pem());
        other_key = write("other.key", other->pem());
        misordered = write("misordered.pem", ec_pem + ca_pem);
    }
    ~Pki() { fs::remove_all(dir); }

    std::string write(const std::string& name, const std::string& text) {
        fs::path p = dir / name;
        std::ofstream(p) << text;
        return p.string();
    }
};

Pki& pki() {
    static Pki p;
    return p;
}

std::shared_ptr<const TlsServerConfig> ec_config() {
    std::string err;
    auto cfg = TlsServerConfig::load(pki().ec_chain, pki().ec_key, err);
    EXPECT_TRUE(cfg) << err;
    return cfg;
}

std::shared_ptr<const TlsClientConfig> client_config(const std::string& ca) {
    std::string err;
    auto cfg = TlsClientConfig::load(ca, err);
    EXPECT_TRUE(cfg) << err;
    return cfg;
}

// --- a raw mbedTLS client for what our client refuses to do ---------------------------

struct RawClient {
    struct Options {
        int max_minor = MBEDTLS_SSL_MINOR_VERSION_3;
        int min_minor = MBEDTLS_SSL_MINOR_VERSION_1;
        std::vector<int> suites;  // empty: mbedTLS defaults
        bool renegotiation = false;
        const mbedtls_ssl_session* session = nullptr;
        bool tickets = true;  // false: offers no SessionTicket extension (RFC 5077 §3.2)
    };
    mbedtls_ssl_config conf;
    mbedtls_ssl_context ssl;
    std::vector<int> suites;
    sluice::test_support::MemBio bio;  // bio.in: bytes to read; bio.out: bytes sent
    bool done = false;
    int last = 0;

    explicit RawClient(const Options& o) : suites(o.suites) {
        mbedtls_ssl_config_init(&conf);
        mbedtls_ssl_init(&ssl);
        mbedtls_ssl_config_defaults(&conf, MBEDTLS_SSL_IS_CLIENT, MBEDTLS_SSL_TRANSPORT_STREAM,
                                    MBEDTLS_SSL_PRESET_DEFAULT);
        mbedtls_ssl_conf_rng(&conf, mbedtls_ctr_drbg_random, &rng().drbg);
        mbedtls_ssl_conf_authmode(&conf, MBEDTLS_SSL_VERIFY_NONE);
        mbedtls_ssl_conf_min_version(&conf, 3, o.min_minor);
        mbedtls_ssl_conf_max_version(&conf, 3, o.max_minor);
        if (!suites.empty()) {
            suites.push_back(0);
            mbedtls_ssl_conf_ciphersuites(&conf, suites.data());
        }
        if (o.renegotiation) {
            mbedtls_ssl_conf_renegotiation(&conf, MBEDTLS_SSL_RENEGOTIATION_ENABLED);
        }
        mbedtls_ssl_conf_session_tickets(&conf, o.tickets ? MBEDTLS_SSL_SESSION_TICKETS_ENABLED
                                                          : MBEDTLS_SSL_SESSION_TICKETS_DISABLED);
        mbedtls_ssl_setup(&ssl, &conf);
        if (o.session != nullptr) {
            EXPECT_EQ(0, mbedtls_ssl_set_session(&ssl, o.session));
        }
        mbedtls_ssl_set_bio(&ssl, &bio, sluice::test_support::MemBio::send,
                            sluice::test_support::MemBio::recv, nullptr);
        step();
    }
    ~RawClient() {
        mbedtls_ssl_free(&ssl);
        mbedtls_ssl_config_free(&conf);
    }
    void step() {
        if (!done) {
            last = mbedtls_ssl_handshake(&ssl);
            done = last == 0;
        }
    }
    Status receive(std::string_view cipher, std::string& plain) {
        bio.in.append(cipher);
        step();
        if (last != 0 && last != MBEDTLS_ERR_SSL_WANT_READ) {
            return Status::error;
        }
        if (!done) {
            return Status::want_more;
        }
        unsigned char buf[4096];
        for (;;) {
            int r = mbedtls_ssl_read(&ssl, buf, sizeof buf);
            if (r > 0) {
                plain.append(reinterpret_cast<const char*>(buf), static_cast<std::size_t>(r));
                continue;
            }
            last = r;
            return r == MBEDTLS_ERR_SSL_WANT_READ ? Status::ok : Status::error;
        }
    }
    std::string& outbox() { return bio.out; }
};

// Moves bytes both ways in pieces of `frag` octets until neither side has anything to
// say. Plaintext received is appended to the *_plain strings.
template <typename A, typename B>
void pump(A& client, B& server, std::size_t frag, Status& cs, Status& ss,
          std::string* client_plain = nullptr, std::string* server_plain = nullptr) {
    std::string sink_c, sink_s;
    std::string& cp = client_plain ? *client_plain : sink_c;
    std::string& sp = server_plain ? *server_plain : sink_s;
    for (int rounds = 0; rounds < 100000; ++rounds) {
        bool moved = false;
        std::string c2s;
        c2s.swap(client.outbox());
        for (std::size_t i = 0; i < c2s.size(); i += frag) {
            ss = server.receive(std::string_view(c2s).substr(i, frag), sp);
            moved = true;
        }
        std::string s2c;
        s2c.swap(server.outbox());
        for (std::size_t i = 0; i < s2c.size(); i += frag) {
            cs = client.receive(std::string_view(s2c).substr(i, frag), cp);
            moved = true;
        }
        if (!moved) {
            return;
        }
    }
    FAIL() << "pump did not settle";
}

std::string pattern(std::size_t n, char seed) {
    std::string s(n, '\0');
    for (std::size_t i = 0; i < n; ++i) {
        s[i] = static_cast<char>(seed + (i * 131) % 251);
    }
    return s;
}

// --- config loading -------------------------------------------------------------------

TEST(TlsServerConfig, LoadsEcdsaChainAndDescribesIt) {
    auto cfg = ec_config();
    ASSERT_TRUE(cfg);
    EXPECT_NE(cfg->summary().find("CN=mx.example.test"), std::string::npos) << cfg->summary();
    EXPECT_NE(cfg->summary().find("key=EC-256"), std::string::npos) << cfg->summary();
    EXPECT_NE(cfg->summary().find("chain=2"), std::string::npos) << cfg->summary();
    EXPECT_NE(cfg->summary().find("not_after=2045-01-01T00:00:00Z"), std::string::npos);
}

TEST(TlsServerConfig, KeyNotMatchingCertificateIsRefused) {
    std::string err;
    EXPECT_FALSE(TlsServerConfig::load(pki().ec_chain, pki().other_key, err));
    EXPECT_NE(err.find("does not match"), std::string::npos) << err;
    err.clear();
    EXPECT_FALSE(TlsServerConfig::load(pki().rsa_chain, pki().ec_key, err));
    EXPECT_NE(err.find("does not match"), std::string::npos) << err;
}

TEST(TlsServerConfig, MissingOrBadFilesAreNamed) {
    std::string err;
    EXPECT_FALSE(TlsServerConfig::load("/nonexistent/cert.pem", pki().ec_key, err));
    EXPECT_NE(err.find("/nonexistent/cert.pem"), std::string::npos) << err;
    err.clear();
    EXPECT_FALSE(TlsServerConfig::load(pki().ec_chain, "/nonexistent/key.pem", err));
    EXPECT_NE(err.find("/nonexistent/key.pem"), std::string::npos) << err;
    err.clear();
    // A key file given as the certificate.
    EXPECT_FALSE(TlsServerConfig::load(pki().ec_key, pki().ec_key, err));
    EXPECT_FALSE(err.empty());
}

TEST(TlsServerConfig, MisorderedChainIsRefused) {
    std::string err;
    EXPECT_FALSE(TlsServerConfig::load(pki().misordered, pki().ec_key, err));
    EXPECT_NE(err.find("did not issue"), std::string::npos) << err;
}

TEST(TlsServerConfig, WeakRsaKeyIsRefused) {
    std::string err;
    EXPECT_FALSE(TlsServerConfig::load(pki().weak_chain, pki().weak_key, err));
    EXPECT_NE(err.find("1024"), std::string::npos) << err;
}

TEST(TlsClientConfig, CaFileMustParse) {
    std::string err;
    EXPECT_FALSE(TlsClientConfig::load("/nonexistent/ca.pem", err));
    EXPECT_FALSE(err.empty());
    auto none = TlsClientConfig::load("", err);
    ASSERT_TRUE(none);
    EXPECT_FALSE(none->has_ca());
    // verify without a CA or with an IP address is refused up front.
    TlsClientStream a(none, "mx.example.test", true);
    std::string plain;
    EXPECT_EQ(a.receive("", plain), Status::error);
    EXPECT_NE(a.error().find("CA"), std::string::npos);
    TlsClientStream b(client_config(pki().ca), "192.0.2.1", true);
    EXPECT_EQ(b.receive("", plain), Status::error);
}

// --- handshakes and data --------------------------------------------------------------

class Fragments : public ::testing::TestWithParam<std::size_t> {};

TEST_P(Fragments, HandshakeAndDataBothWays) {
    const std::size_t frag = GetParam();
    TlsStream server(ec_config());
    TlsClientStream client(client_config(pki().ca), "mx.example.test", true);
    ASSERT_FALSE(client.outbox().empty()) << "ClientHello expected after construction";
    Status cs = Status::want_more, ss = Status::want_more;
    pump(client, server, frag, cs, ss);
    ASSERT_EQ(ss, Status::ok) << server.error();
    ASSERT_EQ(cs, Status::ok) << client.error();
    EXPECT_TRUE(server.handshake_done());
    EXPECT_TRUE(client.handshake_done());
    EXPECT_EQ(server.version(), "TLSv1.2");
    EXPECT_EQ(server.cipher(), "TLS-ECDHE-ECDSA-WITH-AES-128-GCM-SHA256");
    EXPECT_EQ(client.cipher(), server.cipher());
    EXPECT_FALSE(server.resumed());

    const std::string up = pattern(100000, 'a');
    const std::string down = pattern(70001, 'k');
    ASSERT_EQ(client.send(up), Status::ok);
    ASSERT_EQ(server.send(down), Status::ok);
    std::string got_up, got_down;
    pump(client, server, frag, cs, ss, &got_down, &got_up);
    EXPECT_EQ(ss, Status::ok) << server.error();
    EXPECT_EQ(cs, Status::ok) << client.error();
    EXPECT_EQ(got_up, up);
    EXPECT_EQ(got_down, down);
}

INSTANTIATE_TEST_SUITE_P(Sizes, Fragments,
                         ::testing::Values(1, 2, 5, 17, 100, 1000, 4096, 1 << 20));

TEST(TlsStream, RsaCertificateUsesEcdheRsa) {
    std::string err;
    auto cfg = TlsServerConfig::load(pki().rsa_chain, pki().rsa_key, err);
    ASSERT_TRUE(cfg) << err;
    TlsStream server(cfg);
    TlsClientStream client(client_config(pki().ca), "mx.example.test", true);
    Status cs = Status::want_more, ss = Status::want_more;
    pump(client, server, 1000, cs, ss);
    ASSERT_EQ(ss, Status::ok) << server.error();
    ASSERT_EQ(cs, Status::ok) << client.error();
    EXPECT_EQ(server.cipher(), "TLS-ECDHE-RSA-WITH-AES-128-GCM-SHA256");
}

TEST(TlsClientStream, VerificationFailuresStopTheHandshake) {
    {
        TlsStream server(ec_config());
        TlsClientStream client(client_config(pki().ca), "wrong.example.test", true);
        Status cs = Status::want_more, ss = Status::want_more;
        pump(client, server, 4096, cs, ss);
        EXPECT_EQ(cs, Status::error);
        EXPECT_NE(client.error().find("verification failed"), std::string::npos) << client.error();
        EXPECT_FALSE(client.handshake_done());
        EXPECT_EQ(client.send("MAIL FROM:<a@b>\r\n"), Status::error);
        EXPECT_EQ(ss, Status::error) << "the server hears the bad_certificate alert";
    }
    {
        TlsStream server(ec_config());
        TlsClientStream client(client_config(pki().other_ca), "mx.example.test", true);
        Status cs = Status::want_more, ss = Status::want_more;
        pump(client, server, 4096, cs, ss);
        EXPECT_EQ(cs, Status::error);
    }
    {
        // Without verification the same mismatch is accepted (opportunistic TLS).
        TlsStream server(ec_config());
        TlsClientStream client(client_config(pki().other_ca), "wrong.example.test", false);
        Status cs = Status::want_more, ss = Status::want_more;
        pump(client, server, 4096, cs, ss);
        EXPECT_EQ(cs, Status::ok) << client.error();
    }
}

TEST(TlsStream, CloseNotifyReachesThePeer) {
    TlsStream server(ec_config());
    TlsClientStream client(client_config(""), "", false);
    Status cs = Status::want_more, ss = Status::want_more;
    pump(client, server, 4096, cs, ss);
    ASSERT_EQ(ss, Status::ok);
    ASSERT_EQ(server.send("221 bye\r\n"), Status::ok);
    server.close_notify();
    std::string plain;
    cs = client.receive(server.outbox(), plain);
    EXPECT_EQ(cs, Status::closed);
    EXPECT_EQ(plain, "221 bye\r\n");
    EXPECT_EQ(client.receive("", plain), Status::closed);
}

TEST(TlsStream, GarbageFailsTheHandshake) {
    TlsStream server(ec_config());
    std::string plain;
    // A plaintext SMTP command where a ClientHello should be.
    Status s = server.receive("EHLO attacker.test\r\nMAIL FROM:<a@b>\r\n", plain);
    EXPECT_EQ(s, Status::error);
    EXPECT_FALSE(server.error().empty());
    EXPECT_TRUE(plain.empty());
    EXPECT_EQ(server.receive("more", plain), Status::error);
    EXPECT_EQ(server.send("x"), Status::error);
}

TEST(TlsStream, SendBeforeHandshakeIsAnError) {
    TlsStream server(ec_config());
    EXPECT_EQ(server.send("220 hi\r\n"), Status::error);
    EXPECT_TRUE(server.outbox().empty());
    EXPECT_EQ(server.version(), "");
}

TEST(TlsStream, NullConfigIsAnError) {
    TlsStream server(nullptr);
    std::string plain;
    EXPECT_EQ(server.receive("x", plain), Status::error);
    EXPECT_FALSE(server.error().empty());
}

// --- what the server refuses ----------------------------------------------------------

TEST(TlsStream, Tls10And11ClientsAreRefused) {
    for (int minor : {MBEDTLS_SSL_MINOR_VERSION_1, MBEDTLS_SSL_MINOR_VERSION_2}) {
        TlsStream server(ec_config());
        RawClient::Options o;
        o.max_minor = minor;
        RawClient client(o);
        Status cs = Status::want_more, ss = Status::want_more;
        pump(client, server, 4096, cs, ss);
        EXPECT_EQ(ss, Status::error) << "minor " << minor;
        EXPECT_FALSE(server.handshake_done());
        EXPECT_FALSE(client.done);
    }
    // The same raw client with TLS 1.2 allowed gets in (the test client works).
    TlsStream server(ec_config());
    RawClient client(RawClient::Options{});
    Status cs = Status::want_more, ss = Status::want_more;
    pump(client, server, 4096, cs, ss);
    EXPECT_EQ(ss, Status::ok) << server.error();
    EXPECT_TRUE(client.done);
}

TEST(TlsStream, NonEcdheOrNonAeadSuitesAreRefused) {
    std::string err;
    auto rsa_cfg = TlsServerConfig::load(pki().rsa_chain, pki().rsa_key, err);
    ASSERT_TRUE(rsa_cfg) << err;
    struct Case {
        std::shared_ptr<const TlsServerConfig> cfg;
        int suite;
    };
    const Case cases[] = {
        {rsa_cfg, MBEDTLS_TLS_RSA_WITH_AES_128_GCM_SHA256},           // no forward secrecy
        {rsa_cfg, MBEDTLS_TLS_DHE_RSA_WITH_AES_128_GCM_SHA256},       // finite-field DHE
        {rsa_cfg, MBEDTLS_TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256},     // not AEAD
        {ec_config(), MBEDTLS_TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA},  // not AEAD, SHA-1
        {ec_config(), MBEDTLS_TLS_ECDHE_ECDSA_WITH_AES_128_CCM},      // AEAD but not offered
    };
    for (const auto& c : cases) {
        TlsStream server(c.cfg);
        RawClient::Options o;
        o.suites = {c.suite};
        RawClient client(o);
        Status cs = Status::want_more, ss = Status::want_more;
        pump(client, server, 4096, cs, ss);
        EXPECT_EQ(ss, Status::error) << "suite " << c.suite;
        EXPECT_FALSE(client.done);
    }
}

TEST(TlsStream, ClientRenegotiationIsRefused) {
    TlsStream server(ec_config());
    RawClient::Options o;
    o.renegotiation = true;
    RawClient client(o);
    Status cs = Status::want_more, ss = Status::want_more;
    pump(client, server, 4096, cs, ss);
    ASSERT_EQ(ss, Status::ok) << server.error();
    ASSERT_TRUE(client.done);
    int r = mbedtls_ssl_renegotiate(&client.ssl);
    ASSERT_EQ(r, MBEDTLS_ERR_SSL_WANT_READ);
    ASSERT_FALSE(client.bio.out.empty()) << "the client sent a new ClientHello";
    std::string plain;
    std::string hello;
    hello.swap(client.bio.out);
    ss = server.receive(hello, plain);
    // RFC 5746 §4.4 / RFC 5246 §7.2.2: the server declines with a no_renegotiation
    // warning: one encrypted alert record (type 21), no ServerHello.
    EXPECT_EQ(ss, Status::ok) << server.error();
    ASSERT_FALSE(server.outbox().empty());
    EXPECT_EQ(static_cast<unsigned char>(server.outbox()[0]), 21u);
    EXPECT_EQ(server.outbox().size(), 5u + 8u + 2u + 16u) << "exactly one AES-GCM alert record";
    // Whatever the server answered, the client's renegotiation never completes.
    std::string answer;
    answer.swap(server.outbox());
    client.bio.in.append(answer);
    for (int i = 0; i < 3; ++i) {
        r = mbedtls_ssl_renegotiate(&client.ssl);
        EXPECT_NE(r, 0) << "renegotiation completed";
    }
    EXPECT_TRUE(plain.empty());
}

// --- session tickets ------------------------------------------------------------------

struct SavedSession {
    mbedtls_ssl_session s;
    SavedSession() { mbedtls_ssl_session_init(&s); }
    ~SavedSession() { mbedtls_ssl_session_free(&s); }
};

// A full handshake against `cfg`; the client's session (with its ticket) lands in `out`.
void full_handshake(const std::shared_ptr<const TlsServerConfig>& cfg, SavedSession& out,
                    bool& resumed) {
    TlsStream server(cfg);
    RawClient client(RawClient::Options{});
    Status cs = Status::want_more, ss = Status::want_more;
    pump(client, server, 4096, cs, ss);
    ASSERT_EQ(ss, Status::ok) << server.error();
    ASSERT_TRUE(client.done);
    resumed = server.resumed();
    ASSERT_EQ(0, mbedtls_ssl_get_session(&client.ssl, &out.s));
    EXPECT_GT(out.s.ticket_len, 0u) << "the server issued a session ticket";
}

void resume(const std::shared_ptr<const TlsServerConfig>& cfg, const SavedSession& saved,
            bool& resumed, std::string& cipher) {
    TlsStream server(cfg);
    RawClient::Options o;
    o.session = &saved.s;
    RawClient client(o);
    Status cs = Status::want_more, ss = Status::want_more;
    pump(client, server, 4096, cs, ss);
    ASSERT_EQ(ss, Status::ok) << server.error();
    ASSERT_TRUE(client.done);
    resumed = server.resumed();
    cipher = server.cipher();
    // Data flows on the resumed session too.
    ASSERT_EQ(server.send("250 ok\r\n"), Status::ok);
    std::string plain;
    client.receive(server.outbox(), plain);
    EXPECT_EQ(plain, "250 ok\r\n");
}

TEST(TlsTickets, ResumeOnAnotherStreamAndThread) {
    auto cfg = ec_config();
    SavedSession saved;
    bool first_resumed = true;
    std::thread a([&] { full_handshake(cfg, saved, first_resumed); });
    a.join();
    EXPECT_FALSE(first_resumed);
    bool resumed = false;
    std::string cipher;
    std::thread b([&] { resume(cfg, saved, resumed, cipher); });
    b.join();
    EXPECT_TRUE(resumed);
    EXPECT_EQ(cipher, "TLS-ECDHE-ECDSA-WITH-AES-128-GCM-SHA256");
}

TEST(TlsTickets, ResumeAcrossACertificateReload) {
    auto old_cfg = ec_config();
    SavedSession saved;
    bool r1 = true;
    full_handshake(old_cfg, saved, r1);
    std::string err;
    auto new_cfg = TlsServerConfig::load(pki().ec_chain, pki().ec_key, err);  // the reload
    ASSERT_TRUE(new_cfg) << err;
    old_cfg.reset();  // sessions on the old config are gone
    bool resumed = false;
    std::string cipher;
    resume(new_cfg, saved, resumed, cipher);
    EXPECT_TRUE(resumed) << "one ticket context for the whole process";
}

TEST(TlsTickets, ManyThreadsResumeConcurrently) {
    auto cfg = ec_config();
    SavedSession saved;
    bool r1 = true;
    full_handshake(cfg, saved, r1);
    std::vector<std::thread> threads;
    std::vector<int> ok(8, 0);
    for (int t = 0; t < 8; ++t) {
        threads.emplace_back([&, t] {
            for (int i = 0; i < 10; ++i) {
                bool resumed = false;
                std::string cipher;
                resume(cfg, saved, resumed, cipher);
                ok[t] += resumed ? 1 : 0;
            }
        });
    }
    for (auto& th : threads) {
        th.join();
    }
    for (int t = 0; t < 8; ++t) {
        EXPECT_EQ(ok[t], 10) << "thread " << t;
    }
}

TEST(TlsTickets, OurClientResumesWithItsSavedSession) {
    auto cfg = ec_config();
    auto ccfg = client_config(pki().ca);
    std::shared_ptr<const TlsSession> saved;
    {
        TlsStream server(cfg);
        TlsClientStream client(ccfg, "mx.example.test", true);
        EXPECT_EQ(client.session(), nullptr) << "no session before the handshake";
        Status cs = Status::want_more, ss = Status::want_more;
        pump(client, server, 4096, cs, ss);
        ASSERT_EQ(cs, Status::ok) << client.error();
        EXPECT_FALSE(server.resumed());
        saved = client.session();
        ASSERT_NE(saved, nullptr);
    }
    for (int i = 0; i < 2; ++i) {  // a saved session can be used more than once
        TlsStream server(cfg);
        TlsClientStream client(ccfg, "mx.example.test", true, saved);
        Status cs = Status::want_more, ss = Status::want_more;
        pump(client, server, 4096, cs, ss);
        ASSERT_EQ(cs, Status::ok) << client.error();
        ASSERT_EQ(ss, Status::ok) << server.error();
        EXPECT_TRUE(server.resumed());
        ASSERT_EQ(client.send("QUIT\r\n"), Status::ok);
        std::string plain;
        EXPECT_EQ(server.receive(client.outbox(), plain), Status::ok);
        EXPECT_EQ(plain, "QUIT\r\n");
    }
}

TEST(TlsTickets, ATamperedTicketFallsBackToAFullHandshake) {
    auto cfg = ec_config();
    SavedSession saved;
    bool r1 = true;
    full_handshake(cfg, saved, r1);
    ASSERT_GT(saved.s.ticket_len, 20u);
    saved.s.ticket[saved.s.ticket_len / 2] ^= 0x01;
    bool resumed = true;
    std::string cipher;
    resume(cfg, saved, resumed, cipher);
    EXPECT_FALSE(resumed);
}

TEST(TlsTickets, DataPipelinedWithTheClientFinishedArrivesWithTheHandshake) {
    // In an abbreviated handshake the server's Finished comes first, and the client may
    // send its first command in the same segment as its own Finished: the receive() that
    // completes the handshake must return that data.
    auto cfg = ec_config();
    SavedSession saved;
    bool r1 = true;
    full_handshake(cfg, saved, r1);
    TlsStream server(cfg);
    RawClient::Options o;
    o.session = &saved.s;
    RawClient client(o);
    std::string sp, cp;
    ASSERT_EQ(server.receive(client.outbox(), sp), Status::want_more);  // ClientHello
    client.outbox().clear();
    ASSERT_EQ(client.receive(server.outbox(), cp), Status::ok);  // ..server Finished
    server.outbox().clear();
    ASSERT_TRUE(client.done);
    ASSERT_GT(
        mbedtls_ssl_write(&client.ssl, reinterpret_cast<const unsigned char*>("EHLO x\r\n"), 8), 0);
    EXPECT_FALSE(server.handshake_done());
    EXPECT_EQ(server.receive(client.outbox(), sp), Status::ok) << server.error();
    EXPECT_TRUE(server.handshake_done());
    EXPECT_TRUE(server.resumed());
    EXPECT_EQ(sp, "EHLO x\r\n");
}

// --- session IDs, for clients that do not do tickets -----------------------------------

// A full handshake by a client that offers no ticket extension; its session lands in `out`.
void full_handshake_without_tickets(const std::shared_ptr<const TlsServerConfig>& cfg,
                                    SavedSession& out, bool& resumed) {
    TlsStream server(cfg);
    RawClient::Options o;
    o.tickets = false;
    RawClient client(o);
    Status cs = Status::want_more, ss = Status::want_more;
    pump(client, server, 4096, cs, ss);
    ASSERT_EQ(ss, Status::ok) << server.error();
    ASSERT_TRUE(client.done);
    resumed = server.resumed();
    ASSERT_EQ(0, mbedtls_ssl_get_session(&client.ssl, &out.s));
    EXPECT_EQ(out.s.ticket_len, 0u) << "no ticket for a client that did not ask";
    EXPECT_EQ(out.s.id_len, 32u) << "a session ID instead";
}

// A handshake offering `saved`'s session ID and no ticket extension.
void resume_by_id(const std::shared_ptr<const TlsServerConfig>& cfg, const SavedSession& saved,
                  bool& resumed, std::size_t frag = 4096) {
    TlsStream server(cfg);
    RawClient::Options o;
    o.tickets = false;
    o.session = &saved.s;
    RawClient client(o);
    Status cs = Status::want_more, ss = Status::want_more;
    pump(client, server, frag, cs, ss);
    ASSERT_EQ(ss, Status::ok) << server.error();
    ASSERT_TRUE(client.done);
    resumed = server.resumed();
    ASSERT_EQ(server.send("250 ok\r\n"), Status::ok);
    std::string plain;
    client.receive(server.outbox(), plain);
    EXPECT_EQ(plain, "250 ok\r\n");
}

TEST(TlsSessionIds, SecondHandshakeWithTheFirstsIdResumesWithoutATicket) {
    auto cfg = ec_config();
    SavedSession saved;
    bool first_resumed = true;
    full_handshake_without_tickets(cfg, saved, first_resumed);
    EXPECT_FALSE(first_resumed);
    for (std::size_t frag : {1u, 7u, 4096u}) {
        bool resumed = false;
        resume_by_id(cfg, saved, resumed, frag);
        EXPECT_TRUE(resumed) << "fragment size " << frag;
    }
}

TEST(TlsSessionIds, ResumeOnAnotherThreadAndAcrossACertificateReload) {
    auto old_cfg = ec_config();
    SavedSession saved;
    bool r1 = true;
    std::thread a([&] { full_handshake_without_tickets(old_cfg, saved, r1); });
    a.join();
    std::string err;
    auto new_cfg = TlsServerConfig::load(pki().ec_chain, pki().ec_key, err);  // the reload
    ASSERT_TRUE(new_cfg) << err;
    old_cfg.reset();
    bool resumed = false;
    std::thread b([&] { resume_by_id(new_cfg, saved, resumed); });
    b.join();
    EXPECT_TRUE(resumed) << "one session cache for the whole process, as for tickets";
}

TEST(TlsSessionIds, AnUnknownIdGetsAFullHandshake) {
    auto cfg = ec_config();
    SavedSession saved;
    bool r1 = true;
    full_handshake_without_tickets(cfg, saved, r1);
    saved.s.id[0] ^= 0x01;  // an ID this server never issued
    bool resumed = true;
    resume_by_id(cfg, saved, resumed);
    EXPECT_FALSE(resumed);
}

// A session with only `from`'s ID, as mbedTLS hands one to the cache's get.
bool cache_has(SessionCache& cache, const SavedSession& from) {
    SavedSession probe;
    probe.s.id_len = from.s.id_len;
    std::memcpy(probe.s.id, from.s.id, from.s.id_len);
    if (SessionCache::get(&cache, &probe.s) != 0) {
        return false;
    }
    EXPECT_EQ(0, std::memcmp(probe.s.master, from.s.master, sizeof probe.s.master));
    EXPECT_EQ(probe.s.ciphersuite, from.s.ciphersuite);
    return true;
}

TEST(TlsSessionIds, TheCacheIsBoundedLeastRecentlyUsedFirst) {
    auto cfg = ec_config();
    SavedSession a, b, c;
    bool r = true;
    full_handshake_without_tickets(cfg, a, r);
    full_handshake_without_tickets(cfg, b, r);
    full_handshake_without_tickets(cfg, c, r);
    SessionCache cache(2, std::chrono::hours(1));
    ASSERT_EQ(0, SessionCache::set(&cache, &a.s));
    ASSERT_EQ(0, SessionCache::set(&cache, &b.s));
    EXPECT_TRUE(cache_has(cache, a));  // a is now the most recently used
    ASSERT_EQ(0, SessionCache::set(&cache, &c.s));
    EXPECT_EQ(cache.size(), 2u);
    EXPECT_TRUE(cache_has(cache, a));
    EXPECT_FALSE(cache_has(cache, b)) << "the least recently used one went";
    EXPECT_TRUE(cache_has(cache, c));
    ASSERT_EQ(0, SessionCache::set(&cache, &c.s));  // the same ID again replaces it
    EXPECT_EQ(cache.size(), 2u);
}

TEST(TlsSessionIds, AnExpiredSessionIsNotResumedAndIsDropped) {
    auto cfg = ec_config();
    SavedSession a;
    bool r = true;
    full_handshake_without_tickets(cfg, a, r);
    SessionCache cache(10, std::chrono::seconds(0));
    ASSERT_EQ(0, SessionCache::set(&cache, &a.s));
    EXPECT_EQ(cache.size(), 1u);
    EXPECT_FALSE(cache_has(cache, a));
    EXPECT_EQ(cache.size(), 0u);
}

}  // namespace
}  // namespace sluice::tls
