// Micro benchmarks of the pure SMTP parsers: command scanning and DATA reading, in MB/s.
// Run with `make bench` (or build/bench/parser_bench); compare against the memcpy
// reference measured in the same run (the machines are shared and noisy).

#include <benchmark/benchmark.h>

#include <cstring>
#include <string>

#include "daemon/data_reader.hpp"
#include "daemon/smtp_parser.hpp"

namespace {

std::string make_message(std::size_t size) {
    std::string line =
        "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.\r\n";
    std::string out = "From: a@outside.test\r\nTo: user@example.test\r\nSubject: bench\r\n\r\n";
    while (out.size() < size) {
        out += (out.size() / line.size()) % 17 == 0 ? "." + line : line;
    }
    return out + ".\r\n";
}

void BM_MemcpyReference(benchmark::State& state) {
    std::string in = make_message(static_cast<std::size_t>(state.range(0)));
    std::string out(in.size(), '\0');
    for (auto _ : state) {
        std::memcpy(out.data(), in.data(), in.size());
        benchmark::DoNotOptimize(out.data());
    }
    state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * in.size()));
}
BENCHMARK(BM_MemcpyReference)->Arg(1024)->Arg(100 * 1024)->Arg(10 << 20);

void BM_DataReader(benchmark::State& state) {
    std::string in = make_message(static_cast<std::size_t>(state.range(0)));
    std::string out;
    out.reserve(in.size());
    for (auto _ : state) {
        out.clear();
        sluice::smtp::DataReader r(64 << 20);
        // Feed in 16 KiB reads, the way sockets deliver it.
        std::string_view v = in;
        while (!v.empty()) {
            auto res = r.feed(v.substr(0, 16384), out);
            v.remove_prefix(res.consumed);
            if (res.status == sluice::smtp::DataReader::Status::done) {
                break;
            }
        }
        benchmark::DoNotOptimize(out.data());
    }
    state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * in.size()));
}
BENCHMARK(BM_DataReader)->Arg(1024)->Arg(100 * 1024)->Arg(10 << 20);

void BM_CommandScanAndParse(benchmark::State& state) {
    std::string batch;
    for (int i = 0; i < 50; ++i) {
        batch +=
            "MAIL FROM:<sender" + std::to_string(i) + "@outside.test> SIZE=1024 BODY=8BITMIME\r\n";
        batch += "RCPT TO:<user" + std::to_string(i) + "@example.test>\r\n";
        batch += "RSET\r\n";
    }
    std::vector<sluice::smtp::Param> params;
    for (auto _ : state) {
        sluice::smtp::LineScanner sc;
        std::string_view v = batch;
        while (!v.empty()) {
            auto r = sc.next(v);
            if (r.status != sluice::smtp::LineScanner::Status::line) {
                break;
            }
            auto cmd = sluice::smtp::parse_command(r.line);
            if (cmd.verb == sluice::smtp::Verb::mail) {
                auto gt = cmd.arg.find('>');
                sluice::smtp::parse_params(cmd.arg.substr(gt + 1), params);
            }
            benchmark::DoNotOptimize(cmd);
            v.remove_prefix(r.consumed);
        }
    }
    state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * batch.size()));
    state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * 150));
}
BENCHMARK(BM_CommandScanAndParse);

}  // namespace

BENCHMARK_MAIN();
