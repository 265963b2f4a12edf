// Per-RCPT cost of the relay decision: address parsing, and decide_rcpt over real LMDB
// maps (100k local addresses, 100k privileged networks) read by storage::MapReader, the
// way a shard reads them. Run with `make bench` or build/bench/policy_bench.

#include <benchmark/benchmark.h>

#include <filesystem>
#include <string>
#include <vector>

#include "policy/address.hpp"
#include "policy/policy.hpp"
#include "storage/maps.hpp"

namespace {

using namespace sluice;

struct Fixture {
    std::string dir;
    std::unique_ptr<storage::MapReader> reader;
    policy::Rules rules;

    Fixture() {
        dir = (std::filesystem::temp_directory_path() / "sluice-policy-bench").string();
        std::filesystem::remove_all(dir);
        std::vector<storage::MapEntry> addrs, nets;
        for (int i = 0; i < 100000; ++i) {
            addrs.push_back({"user" + std::to_string(i) + "@example.test", "", "bench:1"});
            nets.push_back(
                {"10." + std::to_string(i / 256 % 256) + "." + std::to_string(i % 256) + ".0/24",
                 "net" + std::to_string(i), "bench:1"});
        }
        storage::publish_map(dir, policy::MapId::local_addresses, addrs);
        storage::publish_map(dir, policy::MapId::privileged_networks,
                             std::vector<storage::MapEntry>(nets.begin(), nets.begin() + 65536));
        reader = std::make_unique<storage::MapReader>(dir);
        rules.relay.enabled = true;
        rules.relay.privileged_networks = true;
        rules.local_domains = {"example.test"};
    }
};

Fixture& fixture() {
    static Fixture f;
    return f;
}

void BM_ParsePath(benchmark::State& state) {
    std::string path = "<User.Name+tag@Example.TEST.> SIZE=1024";
    for (auto _ : state) {
        auto p = policy::parse_path(path, false, false);
        benchmark::DoNotOptimize(p);
    }
}
BENCHMARK(BM_ParsePath);

void BM_DecideRcpt(benchmark::State& state) {
    auto& f = fixture();
    policy::Facts facts;
    facts.listener = "mx";
    facts.client = *parse_ip(state.range(0) == 0 ? "192.0.2.1" : "10.1.2.3");
    auto sender = policy::parse_path("<a@outside.test>", true, false).address;
    // range 0: an outside client to a known local user (L101, map lookup);
    // range 1: a privileged client relaying out (G107, CIDR lookup).
    auto rcpt =
        policy::parse_path(state.range(0) == 0 ? "<user4242@example.test>" : "<b@elsewhere.test>",
                           false, false)
            .address;
    auto want = state.range(0) == 0 ? policy::Code::L101 : policy::Code::G107;
    if (policy::decide_rcpt(facts, sender, rcpt, f.rules, *f.reader).code != want) {
        state.SkipWithError("unexpected decision: the fixture is wrong");
        return;
    }
    for (auto _ : state) {
        auto d = policy::decide_rcpt(facts, sender, rcpt, f.rules, *f.reader);
        benchmark::DoNotOptimize(d);
    }
}
BENCHMARK(BM_DecideRcpt)->Arg(0)->Arg(1);

}  // namespace

BENCHMARK_MAIN();
