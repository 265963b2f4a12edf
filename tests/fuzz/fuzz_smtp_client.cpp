// libFuzzer driver for the outbound SMTP client: the next hop's replies are untrusted bytes.
// The input is a script: its first bytes choose fragment sizes and when the driver gives
// the next message (also behind a "." with PIPELINING), times out or drops the connection;
// the rest is what the "server" says. Invariants (smtp_client.hpp's promises): no crash or
// sanitizer report; every message the client accepted gets exactly one result per
// recipient, in order; `kind` agrees with `code`; the client ends finished once the
// connection is gone; output stays bounded.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "daemon/smtp_client.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    using namespace sluice::smtp;
    if (size < 4) {
        return 0;
    }
    const std::size_t step = 1 + data[0] % 32;
    const std::uint8_t actions = data[1];
    const std::size_t n_msgs = 1 + data[2] % 4;
    std::string_view input(reinterpret_cast<const char*>(data + 3), size - 3);

    const std::string body = "Subject: f\r\n\r\n.dot\r\nline\r\n";
    std::vector<OutboundMessage> msgs(n_msgs);
    for (std::size_t m = 0; m < n_msgs; ++m) {
        msgs[m].sender = "a@x.test";
        for (std::size_t r = 0; r <= m % 3; ++r) {
            msgs[m].recipients.push_back("m" + std::to_string(m) + "r" + std::to_string(r) +
                                         "@y.test");
        }
        msgs[m].data = body;
    }

    Client::Options o;
    o.helo = "gw.example.test";
    o.chunk = 16;
    Client c(o);
    c.connected();
    std::size_t given = 0;
    if (c.send_message(msgs[given])) {
        ++given;
    }
    std::vector<std::vector<RecipientResult>> results;
    std::size_t tick = 0;
    for (std::size_t pos = 0; pos < input.size() && !c.finished(); pos += step, ++tick) {
        c.receive(input.substr(pos, step));
        while (c.transaction_done()) {
            results.push_back(c.take_results());
        }
        const bool bit = (actions >> (tick % 8)) & 1;
        if (given < msgs.size() && (c.reusable() || (bit && c.can_pipeline()))) {
            if (c.send_message(msgs[given])) {
                ++given;
            }
        } else if (bit && tick % 11 == 10) {
            c.timed_out();
        }
        c.output_drained();
        if (c.output().size() > 4 * o.chunk + 4096) {
            std::abort();  // output is produced a chunk at a time
        }
        c.output().clear();
    }
    c.connection_lost();
    if (!c.finished()) {
        std::abort();
    }
    while (c.transaction_done()) {
        results.push_back(c.take_results());
    }
    if (results.size() != given) {
        std::abort();
    }
    for (std::size_t m = 0; m < given; ++m) {
        if (results[m].size() != msgs[m].recipients.size()) {
            std::abort();
        }
        for (const auto& r : results[m]) {
            int cls = r.code / 100;
            bool ok = (r.kind == RecipientResult::Kind::delivered && cls == 2) ||
                      (r.kind == RecipientResult::Kind::deferred && cls == 4) ||
                      (r.kind == RecipientResult::Kind::failed && cls == 5);
            if (!ok) {
                std::abort();
            }
        }
    }
    return 0;
}
