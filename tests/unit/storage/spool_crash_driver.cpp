// A load generator for the spool crash test (tests/integration/test_spool_crash.py), which
// kill -9s it at random moments and then checks the spool with its `verify` mode.
//
//   spool_crash_driver submit DIR [--run R] [--threads N] [--min-size B] [--max-size B]
//                                 [--segment-bytes B] [--large B] [--deliver-every K]
//       Submits messages from N threads until killed, each thread waiting for its own
//       commit (a closed loop, like SMTP sessions). Prints "ok ID" once the commit callback
//       reported the message durable, "fail ID" when it failed, and "delivered ID" just
//       before recording every recipient of a message delivered (every K-th message it
//       committed, and about half of what recovery found at start).
//   spool_crash_driver verify DIR
//       Opens the spool (recovery) and checks every message in it against the content its
//       id determines: prints "have ID" or "bad ID WHY"; exits 1 if anything is bad.
//
// Every line is one write(2), so a line the test reads whole was printed whole.

#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "storage/spool.hpp"
#include "tests/support/spool_commit.hpp"

using namespace sluice;
using namespace sluice::storage;

namespace {

std::uint64_t fnv1a(std::string_view s) {
    std::uint64_t h = 1469598103934665603ull;
    for (char c : s) {
        h = (h ^ static_cast<unsigned char>(c)) * 1099511628211ull;
    }
    return h;
}

struct Sizes {
    std::size_t min = 200;
    std::size_t max = 4000;
    std::size_t large = 0;  // 0: no large messages; else every 40th message has this size
};

// Everything about a message follows from its id.
std::unique_ptr<Message> expected(const std::string& id, const Sizes& sz) {
    std::uint64_t h = fnv1a(id);
    auto m = std::make_unique<Message>();
    m->id = id;
    m->sender = "s-" + id + "@sender.test";
    m->client = "192.0.2." + std::to_string(h % 250 + 1);
    m->helo = "helo-" + id + ".test";
    m->listener = "mx";
    m->auth_user = h % 3 == 0 ? "user" + std::to_string(h % 7) : "";
    m->received_at = std::chrono::system_clock::now();
    std::size_t rcpts = 1 + h % 3;
    for (std::size_t i = 0; i < rcpts; ++i) {
        Recipient r;
        r.address = "r" + std::to_string(i) + "-" + id + "@dom" + std::to_string(i) + ".test";
        r.deliver_to = r.address;
        r.code = "L101";
        r.transport.kind = Transport::Kind::smtp;
        r.transport.host = "127.0.0.1";
        r.transport.port = 2526;
        r.transport.text = "smtp://127.0.0.1:2526";
        m->recipients.push_back(std::move(r));
    }
    std::size_t size = sz.min + (h >> 8) % (sz.max - sz.min + 1);
    if (sz.large != 0 && (h >> 20) % 40 == 0) {
        size = sz.large;
    }
    std::mt19937_64 rng(h);
    std::string d = "Message-Id: <" + id + "@crash.test>\r\n\r\n";
    d.reserve(size + 100);
    while (d.size() + 2 < size) {
        std::uint64_t v = rng();
        for (int k = 0; k < 8 && d.size() + 2 < size; ++k) {
            d.push_back(static_cast<char>('!' + (v >> (8 * k)) % 90));
        }
        if (rng() % 10 == 0) {
            d += "\r\n";
        }
    }
    d += "\r\n";
    m->data = std::move(d);
    return m;
}

void say(const std::string& line) {
    std::string l = line + "\n";
    (void)!::write(1, l.data(), l.size());
}

std::size_t arg_size(int argc, char** argv, const char* name, std::size_t def) {
    for (int i = 0; i + 1 < argc; ++i) {
        if (std::strcmp(argv[i], name) == 0) {
            return std::strtoull(argv[i + 1], nullptr, 10);
        }
    }
    return def;
}

std::string arg_str(int argc, char** argv, const char* name, const char* def) {
    for (int i = 0; i + 1 < argc; ++i) {
        if (std::strcmp(argv[i], name) == 0) {
            return argv[i + 1];
        }
    }
    return def;
}

SpoolOptions options(const std::string& dir, int argc, char** argv) {
    SpoolOptions o;
    o.dir = dir;
    o.min_free_bytes = 0;
    o.segment_bytes = arg_size(argc, argv, "--segment-bytes", 64u << 20);
    o.large_message_bytes = arg_size(argc, argv, "--large", 1u << 20);
    return o;
}

Sizes sizes(int argc, char** argv) {
    Sizes s;
    s.min = arg_size(argc, argv, "--min-size", 200);
    s.max = std::max(s.min, arg_size(argc, argv, "--max-size", 4000));
    s.large = arg_size(argc, argv, "--large-size", 0);
    return s;
}

int submit(const std::string& dir, int argc, char** argv) {
    auto opened = Spool::open(options(dir, argc, argv));
    if (!opened.ok()) {
        std::fprintf(stderr, "open: %s\n", opened.error().message.c_str());
        return 2;
    }
    Spool& spool = **opened;
    std::string run = arg_str(argc, argv, "--run", "0");
    std::size_t threads = arg_size(argc, argv, "--threads", 8);
    std::size_t every = std::max<std::size_t>(1, arg_size(argc, argv, "--deliver-every", 3));
    Sizes sz = sizes(argc, argv);

    // Deliver about half of what an earlier run left.
    for (const QueueEntry& e : spool.pending()) {
        if (fnv1a(e.id + run) % 2 == 0) {
            say("delivered " + e.id);
            for (std::size_t i = 0; i < e.recipients.size(); ++i) {
                spool.record_delivered(e.id, i);
            }
        }
    }
    std::vector<std::thread> pool;
    for (std::size_t t = 0; t < threads; ++t) {
        pool.emplace_back([&, t] {
            for (std::uint64_t seq = 0;; ++seq) {
                std::string id = run + "-" + std::to_string(t) + "-" + std::to_string(seq);
                if (test_support::commit_and_wait(spool, expected(id, sz)) != CommitStatus::ok) {
                    say("fail " + id);
                    continue;
                }
                say("ok " + id);
                if (seq % every == every - 1) {
                    say("delivered " + id);
                    for (std::size_t i = 0; i < 3; ++i) {  // extra indices are ignored
                        spool.record_delivered(id, i);
                    }
                }
            }
        });
    }
    for (auto& t : pool) {
        t.join();  // never: the test kills us
    }
    return 0;
}

int verify(const std::string& dir, int argc, char** argv) {
    auto opened = Spool::open(options(dir, argc, argv));
    if (!opened.ok()) {
        std::fprintf(stderr, "open: %s\n", opened.error().message.c_str());
        return 2;
    }
    Spool& spool = **opened;
    Sizes sz = sizes(argc, argv);
    int bad = 0;
    for (const QueueEntry& e : spool.pending()) {
        auto m = spool.load(e.id);
        std::string why;
        if (!m.ok()) {
            why = m.error().message;
        } else {
            auto want = expected(e.id, sz);
            const Message& got = **m;
            if (got.data != want->data) {
                why = "data differs (" + std::to_string(got.data.size()) + " bytes, want " +
                      std::to_string(want->data.size()) + ")";
            } else if (got.sender != want->sender || got.client != want->client ||
                       got.helo != want->helo || got.auth_user != want->auth_user ||
                       got.recipients.size() != want->recipients.size()) {
                why = "envelope differs";
            } else {
                for (std::size_t i = 0; i < got.recipients.size(); ++i) {
                    if (got.recipients[i].address != want->recipients[i].address ||
                        got.recipients[i].transport.text != want->recipients[i].transport.text) {
                        why = "recipient differs";
                    }
                }
            }
        }
        if (why.empty()) {
            say("have " + e.id);
        } else {
            say("bad " + e.id + " " + why);
            ++bad;
        }
    }
    auto st = spool.stats();
    std::fprintf(
        stderr, "verify: messages=%llu segments=%llu bytes=%llu torn_bytes=%llu\n",
        static_cast<unsigned long long>(st.messages), static_cast<unsigned long long>(st.segments),
        static_cast<unsigned long long>(st.bytes), static_cast<unsigned long long>(st.torn_bytes));
    return bad == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 3) {
        std::fprintf(stderr, "usage: spool_crash_driver submit|verify DIR [options]\n");
        return 2;
    }
    std::string mode = argv[1];
    if (mode == "submit") {
        return submit(argv[2], argc, argv);
    }
    if (mode == "verify") {
        return verify(argv[2], argc, argv);
    }
    std::fprintf(stderr, "unknown mode %s\n", argv[1]);
    return 2;
}
