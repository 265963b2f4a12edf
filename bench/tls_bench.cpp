// TLS handshake cost on the server, against the raw cost of its public-key crypto.
//
//   raw:     what a full ECDHE-P256 + ECDSA-P256 handshake must compute on the server,
//            with mbedTLS primitives only: ephemeral key generation, the shared secret
//            (with the blinding TLS uses) and one ECDSA signature. The ceiling.
//   full:    complete in-memory handshakes, daemon/tls.hpp TlsStream against
//            TlsClientStream; only the server's thread CPU time is counted (manual time).
//   resumed: the same with a session ticket (RFC 5077).
// Targets: full >= 0.7 x the raw rate; resumed >= 5 x the full rate. The
// ratios are printed after the table. Run with `make bench` or build/bench/tls_bench.

#include <benchmark/benchmark.h>
#include <mbedtls/ctr_drbg.h>
#include <mbedtls/ecdh.h>
#include <mbedtls/entropy.h>
#include <mbedtls/pk.h>
#include <mbedtls/sha256.h>
#include <mbedtls/ssl.h>
#include <mbedtls/x509_crt.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "daemon/tls.hpp"
#include "tests/support/mem_bio.hpp"

namespace {

using sluice::tls::TlsChannel;
using sluice::tls::TlsServerConfig;
using sluice::tls::TlsStream;
using Status = TlsChannel::Status;

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

// The server's ECDSA P-256 key and a self-signed certificate for it, written to a temp
// dir and loaded as a TlsServerConfig.
struct Fixture {
    mbedtls_pk_context key;
    std::shared_ptr<const TlsServerConfig> server;

    Fixture() {
        mbedtls_pk_init(&key);
        mbedtls_pk_setup(&key, mbedtls_pk_info_from_type(MBEDTLS_PK_ECKEY));
        mbedtls_ecp_gen_key(MBEDTLS_ECP_DP_SECP256R1, mbedtls_pk_ec(key), mbedtls_ctr_drbg_random,
                            &rng().drbg);
        mbedtls_x509write_cert w;
        mbedtls_x509write_crt_init(&w);
        mbedtls_mpi serial;
        mbedtls_mpi_init(&serial);
        mbedtls_mpi_lset(&serial, 1);
        mbedtls_x509write_crt_set_version(&w, MBEDTLS_X509_CRT_VERSION_3);
        mbedtls_x509write_crt_set_serial(&w, &serial);
        mbedtls_x509write_crt_set_validity(&w, "20240101000000", "20450101000000");
        mbedtls_x509write_crt_set_subject_name(&w, "CN=mx.example.test");
        mbedtls_x509write_crt_set_issuer_name(&w, "CN=mx.example.test");
        mbedtls_x509write_crt_set_subject_key(&w, &key);
        mbedtls_x509write_crt_set_issuer_key(&w, &key);
        mbedtls_x509write_crt_set_md_alg(&w, MBEDTLS_MD_SHA256);
        std::vector<unsigned char> cert(4096), pem(4096);
        mbedtls_x509write_crt_pem(&w, cert.data(), cert.size(), mbedtls_ctr_drbg_random,
                                  &rng().drbg);
        mbedtls_pk_write_key_pem(&key, pem.data(), pem.size());
        mbedtls_mpi_free(&serial);
        mbedtls_x509write_crt_free(&w);

        char tmpl[] = "/tmp/sluice-tls-bench-XXXXXX";
        std::filesystem::path dir = mkdtemp(tmpl);
        std::ofstream(dir / "cert.pem") << reinterpret_cast<const char*>(cert.data());
        std::ofstream(dir / "key.pem") << reinterpret_cast<const char*>(pem.data());
        std::string err;
        server = TlsServerConfig::load(dir / "cert.pem", dir / "key.pem", err);
        std::filesystem::remove_all(dir);
        if (!server) {
            std::fprintf(stderr, "tls_bench: %s\n", err.c_str());
            std::exit(2);
        }
    }
    ~Fixture() { mbedtls_pk_free(&key); }
};

Fixture& fixture() {
    static Fixture f;
    return f;
}

double thread_cpu_seconds() {
    timespec ts{};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

// --- (a) the raw crypto -------------------------------------------------------------------

struct Ecdh {
    mbedtls_ecp_group_id id;
    mbedtls_ecp_group grp;
    mbedtls_mpi d, z;
    mbedtls_ecp_point q, peer;
    explicit Ecdh(mbedtls_ecp_group_id group) : id(group) {
        mbedtls_ecp_group_init(&grp);
        mbedtls_mpi_init(&d);
        mbedtls_mpi_init(&z);
        mbedtls_ecp_point_init(&q);
        mbedtls_ecp_point_init(&peer);
        mbedtls_ecp_group_load(&grp, id);
        // The client's share, made once.
        mbedtls_mpi pd;
        mbedtls_mpi_init(&pd);
        mbedtls_ecdh_gen_public(&grp, &pd, &peer, mbedtls_ctr_drbg_random, &rng().drbg);
        mbedtls_mpi_free(&pd);
    }
    ~Ecdh() {
        mbedtls_ecp_point_free(&peer);
        mbedtls_ecp_point_free(&q);
        mbedtls_mpi_free(&z);
        mbedtls_mpi_free(&d);
        mbedtls_ecp_group_free(&grp);
    }
    // A fresh ephemeral key. With fresh_group, in a newly loaded group, as mbedTLS's TLS
    // code does per handshake (P-256 then rebuilds its comb table for the generator).
    void keygen(bool fresh_group) {
        if (fresh_group) {
            mbedtls_ecp_group_load(&grp, id);
        }
        mbedtls_ecdh_gen_public(&grp, &d, &q, mbedtls_ctr_drbg_random, &rng().drbg);
    }
    // The shared secret, with the RNG passed for blinding as TLS passes it.
    void shared() {
        mbedtls_ecdh_compute_shared(&grp, &z, &peer, &d, mbedtls_ctr_drbg_random, &rng().drbg);
    }
};

void ecdsa_sign(mbedtls_pk_context& key) {
    // ServerKeyExchange: a SHA-256 hash of the params signed with the certificate's key.
    unsigned char hash[32];
    unsigned char msg[100] = {1, 2, 3};
    mbedtls_sha256_ret(msg, sizeof msg, hash, 0);
    unsigned char sig[MBEDTLS_PK_SIGNATURE_MAX_SIZE];
    std::size_t len = 0;
    mbedtls_pk_sign(&key, MBEDTLS_MD_SHA256, hash, sizeof hash, sig, &len, mbedtls_ctr_drbg_random,
                    &rng().drbg);
    benchmark::DoNotOptimize(sig);
}

// (a) as the issue defines it: ECDHE P-256 (group loaded once: the best case) + ECDSA P-256.
void BM_Raw_EcdheP256_EcdsaP256(benchmark::State& state) {
    Ecdh ecdh(MBEDTLS_ECP_DP_SECP256R1);
    for (auto _ : state) {
        ecdh.keygen(false);
        ecdh.shared();
        ecdsa_sign(fixture().key);
    }
}

void BM_Raw_EcdheX25519_EcdsaP256(benchmark::State& state) {
    Ecdh ecdh(MBEDTLS_ECP_DP_CURVE25519);
    for (auto _ : state) {
        ecdh.keygen(false);
        ecdh.shared();
        ecdsa_sign(fixture().key);
    }
}

// The parts, to explain the handshake numbers.
void BM_Part_P256_Keygen(benchmark::State& state) {
    Ecdh ecdh(MBEDTLS_ECP_DP_SECP256R1);
    for (auto _ : state) {
        ecdh.keygen(state.range(0) != 0);
    }
    state.SetLabel(state.range(0) != 0 ? "fresh group (as in TLS)" : "cached group");
}

void BM_Part_P256_Shared(benchmark::State& state) {
    Ecdh ecdh(MBEDTLS_ECP_DP_SECP256R1);
    ecdh.keygen(false);
    for (auto _ : state) {
        ecdh.shared();
    }
}

void BM_Part_X25519_KeygenShared(benchmark::State& state) {
    Ecdh ecdh(MBEDTLS_ECP_DP_CURVE25519);
    for (auto _ : state) {
        ecdh.keygen(true);
        ecdh.shared();
    }
}

void BM_Part_EcdsaP256_Sign(benchmark::State& state) {
    for (auto _ : state) {
        ecdsa_sign(fixture().key);
    }
}

// --- (b) and (c) handshakes -----------------------------------------------------------------

// A plain mbedTLS client preferring one ECDHE group (its CPU is not counted). It always
// offers P-256 too: the server's ECDSA certificate is on P-256 (RFC 4492 §5.1.1).
struct Client {
    mbedtls_ssl_config conf;
    mbedtls_ssl_context ssl;
    mbedtls_ecp_group_id curves[3];
    sluice::test_support::MemBio bio;  // bio.in: bytes to read; bio.out: bytes sent
    bool done = false;

    Client(mbedtls_ecp_group_id curve, const mbedtls_ssl_session* resume) {
        curves[0] = curve;
        curves[1] =
            curve == MBEDTLS_ECP_DP_SECP256R1 ? MBEDTLS_ECP_DP_NONE : MBEDTLS_ECP_DP_SECP256R1;
        curves[2] = MBEDTLS_ECP_DP_NONE;
        mbedtls_ssl_config_init(&conf);
        mbedtls_ssl_init(&ssl);
        mbedtls_ssl_config_defaults(&conf, MBEDTLS_SSL_IS_CLIENT, MBEDTLS_SSL_TRANSPORT_STREAM,
                                    MBEDTLS_SSL_PRESET_DEFAULT);
        mbedtls_ssl_conf_rng(&conf, mbedtls_ctr_drbg_random, &rng().drbg);
        mbedtls_ssl_conf_authmode(&conf, MBEDTLS_SSL_VERIFY_NONE);
        mbedtls_ssl_conf_curves(&conf, curves);
        mbedtls_ssl_setup(&ssl, &conf);
        if (resume != nullptr) {
            mbedtls_ssl_set_session(&ssl, resume);
        }
        mbedtls_ssl_set_bio(&ssl, &bio, sluice::test_support::MemBio::send,
                            sluice::test_support::MemBio::recv, nullptr);
        step();
    }
    ~Client() {
        mbedtls_ssl_free(&ssl);
        mbedtls_ssl_config_free(&conf);
    }
    void step() { done = done || mbedtls_ssl_handshake(&ssl) == 0; }
};

struct Saved {
    mbedtls_ssl_session s;
    Saved() { mbedtls_ssl_session_init(&s); }
    ~Saved() { mbedtls_ssl_session_free(&s); }
};

// One handshake; returns the server's CPU seconds (stream creation and teardown included).
double handshake(mbedtls_ecp_group_id curve, const Saved* resume, Saved* save, bool* resumed) {
    Client client(curve, resume != nullptr ? &resume->s : nullptr);
    std::string sp;
    double t0 = thread_cpu_seconds();
    auto server = std::make_unique<TlsStream>(fixture().server);
    double server_cpu = thread_cpu_seconds() - t0;
    Status ss = Status::want_more;
    for (int round = 0; round < 10 && !(client.done && ss == Status::ok); ++round) {
        std::string c2s;
        c2s.swap(client.bio.out);
        t0 = thread_cpu_seconds();
        ss = server->receive(c2s, sp);
        server_cpu += thread_cpu_seconds() - t0;
        client.bio.in += server->outbox();
        server->outbox().clear();
        client.step();
    }
    if (!client.done || ss != Status::ok) {
        std::fprintf(stderr, "tls_bench: handshake failed: %s\n", server->error().c_str());
        std::exit(2);
    }
    if (save != nullptr) {
        mbedtls_ssl_get_session(&client.ssl, &save->s);
    }
    if (resumed != nullptr) {
        *resumed = server->resumed();
    }
    t0 = thread_cpu_seconds();
    server.reset();
    server_cpu += thread_cpu_seconds() - t0;
    return server_cpu;
}

void full_handshakes(benchmark::State& state, mbedtls_ecp_group_id curve) {
    for (auto _ : state) {
        state.SetIterationTime(handshake(curve, nullptr, nullptr, nullptr));
    }
    state.counters["per_s"] =
        benchmark::Counter(static_cast<double>(state.iterations()), benchmark::Counter::kIsRate);
}

void BM_Handshake_Full_X25519(benchmark::State& state) {
    full_handshakes(state, MBEDTLS_ECP_DP_CURVE25519);
}

void BM_Handshake_Full_P256(benchmark::State& state) {
    full_handshakes(state, MBEDTLS_ECP_DP_SECP256R1);
}

void BM_Handshake_Resumed(benchmark::State& state) {
    Saved saved;
    handshake(MBEDTLS_ECP_DP_CURVE25519, nullptr, &saved, nullptr);
    std::int64_t resumed_count = 0;
    for (auto _ : state) {
        bool resumed = false;
        state.SetIterationTime(handshake(MBEDTLS_ECP_DP_CURVE25519, &saved, nullptr, &resumed));
        resumed_count += resumed ? 1 : 0;
    }
    if (resumed_count != state.iterations()) {
        state.SkipWithError("a handshake did not resume");
    }
    state.counters["per_s"] =
        benchmark::Counter(static_cast<double>(state.iterations()), benchmark::Counter::kIsRate);
}

// CPU time for the raw crypto (the machine is shared: wall time includes other work),
// manual time (the server thread's CPU) for handshakes.
BENCHMARK(BM_Raw_EcdheP256_EcdsaP256)->MeasureProcessCPUTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_Raw_EcdheX25519_EcdsaP256)->MeasureProcessCPUTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_Part_P256_Keygen)->Arg(0)->Arg(1)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_Part_P256_Shared)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_Part_X25519_KeygenShared)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_Part_EcdsaP256_Sign)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_Handshake_Full_X25519)->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_Handshake_Full_P256)->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_Handshake_Resumed)->UseManualTime()->Unit(benchmark::kMicrosecond);

// Keeps each benchmark's time per iteration to print the ratios at the end.
class RatioReporter : public benchmark::ConsoleReporter {
  public:
    void ReportRuns(const std::vector<Run>& runs) override {
        ConsoleReporter::ReportRuns(runs);
        for (const auto& r : runs) {
            if (r.run_type == Run::RT_Iteration && !r.error_occurred) {
                const std::string& name = r.run_name.function_name;
                double t = name.starts_with("BM_Handshake") ? r.GetAdjustedRealTime()
                                                            : r.GetAdjustedCPUTime();
                seconds[name] = t / benchmark::GetTimeUnitMultiplier(r.time_unit);
            }
        }
    }
    std::map<std::string, double> seconds;
};

}  // namespace

int main(int argc, char** argv) {
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) {
        return 1;
    }
    fixture();
    RatioReporter reporter;
    benchmark::RunSpecifiedBenchmarks(&reporter);
    auto get = [&](const char* name) {
        auto it = reporter.seconds.find(name);
        return it == reporter.seconds.end() ? 0.0 : it->second;
    };
    const double raw_p256 = get("BM_Raw_EcdheP256_EcdsaP256");
    const double raw_x25519 = get("BM_Raw_EcdheX25519_EcdsaP256");
    const double full_x25519 = get("BM_Handshake_Full_X25519");
    const double full_p256 = get("BM_Handshake_Full_P256");
    const double resumed = get("BM_Handshake_Resumed");
    if (raw_p256 > 0 && raw_x25519 > 0 && full_x25519 > 0 && full_p256 > 0 && resumed > 0) {
        std::printf("\nserver CPU per handshake (us) and handshakes/s per core:\n");
        const std::pair<const char*, double> rows[] = {
            {"raw ECDHE-P256 + ECDSA-P256 (ceiling)", raw_p256},
            {"raw ECDHE-X25519 + ECDSA-P256", raw_x25519},
            {"full handshake, X25519 (usual clients)", full_x25519},
            {"full handshake, P-256", full_p256},
            {"resumed handshake (ticket)", resumed},
        };
        for (const auto& [what, t] : rows) {
            std::printf("  %-40s %8.1f us %9.0f /s\n", what, t * 1e6, 1 / t);
        }
        std::printf(
            "full / raw rate: P-256 %.2f, X25519 %.2f, X25519 vs the P-256 ceiling %.2f "
            "(target >= 0.70)\n",
            raw_p256 / full_p256, raw_x25519 / full_x25519, raw_p256 / full_x25519);
        std::printf("resumed / full rate: %.1f vs X25519, %.1f vs P-256 (target >= 5)\n",
                    full_x25519 / resumed, full_p256 / resumed);
    }
    benchmark::Shutdown();
    return 0;
}
