// Spool throughput: messages per second and fsyncs per message with 1, 8, 32 and 128
// concurrent submitters (closed loop: each waits for its commit before the next, like SMTP
// sessions waiting to answer 250), 1 KB and 100 KB messages. By default each committed
// message also gets its "delivered" outcome record, as in steady state (the spool stays
// small and segments are deleted as they go); --commit-only leaves them out.
//
// The reference measured in the same run: one file per message, each written, fdatasync'd
// and its directory fsync'd (a Maildir-like queue), by the same number of threads.
//
//   spool_bench [--dir DIR] [--seconds S] [--concurrency 1,8,32,128] [--sizes 1024,102400]
//               [--syncs 1,4] [--repeat 3] [--commit-only] [--no-reference] [--memory N]
//
// --syncs: SpoolOptions::syncs_in_flight values to compare (default: the default);
// --repeat: runs of each, interleaved, the median reported (default 3).
//
// DIR must be on the disk the spool will use (default: $TMPDIR or /var/tmp). --memory N
// queues N 1 KB messages and reports the resident memory per queued message.

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "storage/spool.hpp"
#include "tests/support/spool_commit.hpp"

using namespace sluice;
using namespace sluice::storage;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

struct Args {
    std::string dir;
    double seconds = 3;
    std::vector<std::size_t> conc{1, 8, 32, 128};
    std::vector<std::size_t> sizes{1024, 100 * 1024};
    std::vector<std::size_t> syncs{SpoolOptions{}.syncs_in_flight};
    bool deliver = true;
    bool reference = true;
    std::size_t memory = 0;
    std::size_t repeat = 3;
};

std::vector<std::size_t> parse_list(const char* s) {
    std::vector<std::size_t> out;
    for (const char* p = s; *p;) {
        out.push_back(std::strtoull(p, const_cast<char**>(&p), 10));
        if (*p == ',') {
            ++p;
        }
    }
    return out;
}

std::unique_ptr<Message> make_message(std::size_t t, std::uint64_t seq, std::size_t size) {
    auto m = std::make_unique<Message>();
    m->id = "b" + std::to_string(t) + "x" + std::to_string(seq);
    m->sender = "sender@outside.test";
    m->client = "192.0.2.1";
    m->helo = "client.outside.test";
    m->listener = "mx";
    m->received_at = std::chrono::system_clock::now();
    Recipient r;
    r.address = "user@example.test";
    r.deliver_to = r.address;
    r.code = "L101";
    r.transport.kind = Transport::Kind::smtp;
    r.transport.host = "127.0.0.1";
    r.transport.port = 2526;
    r.transport.text = "smtp://127.0.0.1:2526";
    m->recipients.push_back(std::move(r));
    m->data.assign(size, 'x');
    for (std::size_t i = 76; i < size; i += 78) {
        m->data[i] = '\r';
        m->data[i + 1 < size ? i + 1 : i] = '\n';
    }
    return m;
}

struct Row {
    double msgs_per_s = 0;
    double fsyncs_per_msg = 0;
    double batch = 0;
    double p50_ms = 0;
    double p99_ms = 0;
};

double percentile(std::vector<double>& v, double p) {
    if (v.empty()) {
        return 0;
    }
    std::size_t k = static_cast<std::size_t>(p * static_cast<double>(v.size() - 1));
    std::nth_element(v.begin(), v.begin() + static_cast<long>(k), v.end());
    return v[k];
}

// The commit latencies of every thread, as the row's p50 and p99.
void set_latency(Row& r, const std::vector<std::vector<double>>& lat) {
    std::vector<double> all;
    for (const auto& l : lat) {
        all.insert(all.end(), l.begin(), l.end());
    }
    r.p50_ms = percentile(all, 0.5);
    r.p99_ms = percentile(all, 0.99);
}

Row run_spool(const Args& a, std::size_t conc, std::size_t size, std::size_t syncs) {
    std::string dir = a.dir + "/spool-bench-" + std::to_string(::getpid());
    fs::remove_all(dir);
    SpoolOptions o;
    o.dir = dir;
    o.min_free_bytes = 0;
    o.syncs_in_flight = syncs;
    auto opened = Spool::open(o);
    if (!opened.ok()) {
        std::fprintf(stderr, "open %s: %s\n", dir.c_str(), opened.error().message.c_str());
        std::exit(2);
    }
    Spool& spool = **opened;
    std::atomic<bool> stop{false};
    std::atomic<std::uint64_t> done_msgs{0};
    std::vector<std::vector<double>> lat(conc);
    SpoolStats before{};
    Clock::time_point t0, t1;
    std::atomic<std::size_t> ready{0};
    std::vector<std::thread> threads;
    for (std::size_t t = 0; t < conc; ++t) {
        threads.emplace_back([&, t] {
            ++ready;
            for (std::uint64_t seq = 0; !stop.load(std::memory_order_relaxed); ++seq) {
                auto start = Clock::now();
                if (test_support::commit_and_wait(spool, make_message(t, seq, size)) !=
                    CommitStatus::ok) {
                    std::fprintf(stderr, "commit failed\n");
                    std::exit(2);
                }
                lat[t].push_back(
                    std::chrono::duration<double, std::milli>(Clock::now() - start).count());
                if (a.deliver) {
                    spool.record_delivered("b" + std::to_string(t) + "x" + std::to_string(seq), 0);
                }
                ++done_msgs;
            }
        });
    }
    while (ready.load() < conc) {
        std::this_thread::yield();
    }
    // Warm up, then measure a window of whole seconds.
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    before = spool.stats();
    std::uint64_t n0 = done_msgs.load();
    t0 = Clock::now();
    std::this_thread::sleep_for(std::chrono::duration<double>(a.seconds));
    std::uint64_t n1 = done_msgs.load();
    SpoolStats after = spool.stats();
    t1 = Clock::now();
    stop = true;
    for (auto& t : threads) {
        t.join();
    }
    spool.close();
    fs::remove_all(dir);
    double secs = std::chrono::duration<double>(t1 - t0).count();
    double msgs = static_cast<double>(n1 - n0);
    Row r;
    r.msgs_per_s = msgs / secs;
    r.fsyncs_per_msg = static_cast<double>(after.fsyncs - before.fsyncs) / std::max(msgs, 1.0);
    r.batch = static_cast<double>(after.committed - before.committed) /
              std::max<double>(1.0, static_cast<double>(after.batches - before.batches));
    set_latency(r, lat);
    return r;
}

// One file per message: write, fdatasync, fsync of the directory (what a Maildir-like
// queue must do for each message).
Row run_reference(const Args& a, std::size_t conc, std::size_t size) {
    std::string dir = a.dir + "/file-bench-" + std::to_string(::getpid());
    fs::remove_all(dir);
    fs::create_directories(dir);
    int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
    std::atomic<bool> stop{false};
    std::atomic<std::uint64_t> n{0};
    std::vector<std::vector<double>> lat(conc);
    std::string data = make_message(0, 0, size)->data;
    std::vector<std::thread> threads;
    for (std::size_t t = 0; t < conc; ++t) {
        threads.emplace_back([&, t] {
            for (std::uint64_t seq = 0; !stop.load(std::memory_order_relaxed); ++seq) {
                auto start = Clock::now();
                std::string p = dir + "/" + std::to_string(t) + "." + std::to_string(seq);
                int fd = ::open(p.c_str(), O_WRONLY | O_CREAT | O_EXCL, 0640);
                bool ok =
                    fd >= 0 &&
                    ::write(fd, data.data(), data.size()) == static_cast<ssize_t>(data.size()) &&
                    ::fdatasync(fd) == 0 && ::fsync(dfd) == 0;
                ::close(fd);
                if (!ok) {
                    std::perror("reference write");
                    std::exit(2);
                }
                lat[t].push_back(
                    std::chrono::duration<double, std::milli>(Clock::now() - start).count());
                ::unlink(p.c_str());  // delivered: gone (like the spool's delivered record)
                ++n;
            }
        });
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    std::uint64_t n0 = n.load();
    auto t0 = Clock::now();
    std::this_thread::sleep_for(std::chrono::duration<double>(a.seconds));
    std::uint64_t n1 = n.load();
    auto t1 = Clock::now();
    stop = true;
    for (auto& t : threads) {
        t.join();
    }
    ::close(dfd);
    fs::remove_all(dir);
    Row r;
    double msgs = static_cast<double>(n1 - n0);
    r.msgs_per_s = msgs / std::chrono::duration<double>(t1 - t0).count();
    r.fsyncs_per_msg = 2;
    r.batch = 1;
    set_latency(r, lat);
    return r;
}

long rss_kb() {
    std::ifstream in("/proc/self/status");
    std::string line;
    while (std::getline(in, line)) {
        if (line.rfind("VmRSS:", 0) == 0) {
            return std::atol(line.c_str() + 6);
        }
    }
    return 0;
}

void run_memory(const Args& a) {
    std::string dir = a.dir + "/spool-mem-" + std::to_string(::getpid());
    fs::remove_all(dir);
    SpoolOptions o;
    o.dir = dir;
    o.min_free_bytes = 0;
    auto s = std::move(Spool::open(o).value());
    long before = rss_kb();
    std::atomic<std::size_t> done{0};
    for (std::size_t i = 0; i < a.memory; ++i) {
        s->submit(make_message(0, i, 1024),
                  [&](CommitStatus, std::unique_ptr<Message>) { ++done; });
        while (i - done.load() > 4096) {
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
        }
    }
    (void)s->sync();
    long after = rss_kb();
    s->close();
    auto t0 = Clock::now();
    auto r = Spool::open(o);
    double rec = std::chrono::duration<double>(Clock::now() - t0).count();
    std::printf(
        "memory: %zu queued 1 KB messages: %.0f bytes of RSS each; recovery of them: %.2f s\n",
        a.memory, 1024.0 * static_cast<double>(after - before) / static_cast<double>(a.memory),
        rec);
    (*r)->close();
    fs::remove_all(dir);
}

}  // namespace

int main(int argc, char** argv) {
    Args a;
    const char* tmp = std::getenv("TMPDIR");
    a.dir = tmp ? tmp : "/var/tmp";
    for (int i = 1; i < argc; ++i) {
        std::string k = argv[i];
        auto val = [&]() -> const char* {
            if (i + 1 >= argc) {
                std::fprintf(stderr, "%s needs a value\n", k.c_str());
                std::exit(2);
            }
            return argv[++i];
        };
        if (k == "--dir") {
            a.dir = val();
        } else if (k == "--seconds") {
            a.seconds = std::atof(val());
        } else if (k == "--concurrency") {
            a.conc = parse_list(val());
        } else if (k == "--sizes") {
            a.sizes = parse_list(val());
        } else if (k == "--repeat") {
            a.repeat = std::max<std::size_t>(1, std::strtoull(val(), nullptr, 10));
        } else if (k == "--syncs") {
            a.syncs = parse_list(val());
        } else if (k == "--commit-only") {
            a.deliver = false;
        } else if (k == "--no-reference") {
            a.reference = false;
        } else if (k == "--memory") {
            a.memory = std::strtoull(val(), nullptr, 10);
        } else {
            std::fprintf(
                stderr,
                "usage: spool_bench [--dir DIR] [--seconds S] [--concurrency 1,8,32,128] "
                "[--sizes 1024,102400] [--syncs 4] [--repeat 3] [--commit-only] [--no-reference] "
                "[--memory N]\n");
            return 2;
        }
    }
    if (a.memory) {
        run_memory(a);
        return 0;
    }
    std::printf("dir=%s seconds=%.1f outcome_records=%s\n", a.dir.c_str(), a.seconds,
                a.deliver ? "yes" : "no");
    std::printf("%-16s %8s %5s %10s %8s %11s %7s %8s %8s\n", "store", "size", "conc", "msgs/s",
                "MB/s", "fsyncs/msg", "batch", "p50_ms", "p99_ms");
    for (std::size_t size : a.sizes) {
        for (std::size_t c : a.conc) {
            // The machines are shared and their disks noisy: every store runs `repeat`
            // times, interleaved, and the median run (by msgs/s) is reported.
            std::vector<std::string> names;
            for (std::size_t k : a.syncs) {
                names.push_back("spool/syncs=" + std::to_string(k));
            }
            if (a.reference) {
                names.push_back("file+fsync");
            }
            std::vector<std::vector<Row>> runs(names.size());
            for (std::size_t rep = 0; rep < a.repeat; ++rep) {
                for (std::size_t i = 0; i < names.size(); ++i) {
                    runs[i].push_back(i < a.syncs.size() ? run_spool(a, c, size, a.syncs[i])
                                                         : run_reference(a, c, size));
                }
            }
            for (std::size_t i = 0; i < names.size(); ++i) {
                auto& v = runs[i];
                std::sort(v.begin(), v.end(),
                          [](const Row& x, const Row& y) { return x.msgs_per_s < y.msgs_per_s; });
                const Row& r = v[v.size() / 2];
                std::printf(
                    "%-16s %8zu %5zu %10.0f %8.1f %11.3f %7.1f %8.2f %8.2f  runs %.0f..%.0f\n",
                    names[i].c_str(), size, c, r.msgs_per_s,
                    r.msgs_per_s * static_cast<double>(size) / 1e6, r.fsyncs_per_msg, r.batch,
                    r.p50_ms, r.p99_ms, v.front().msgs_per_s, v.back().msgs_per_s);
                std::fflush(stdout);
            }
        }
    }
    return 0;
}
