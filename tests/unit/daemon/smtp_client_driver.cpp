// A test driver for the outbound client against real next hops (smtp-sink, aiosmtpd,
// scripted Python servers): plain blocking sockets and poll(2) for the timeouts the client
// asks for. Not part of the daemon; tests/integration/test_smtp_client.py runs it.
//
//   smtp_client_driver deliver HOST PORT [--helo NAME] [--timeout-ms N] [--chunk N]
//       [--strict-8bitmime] MESSAGE...        MESSAGE = --from ADDR --to ADDR[,ADDR] --data FILE
//     Delivers the messages in order on one connection (each given when the client is
//     reusable), QUITs, and prints one JSON object: per transaction the per-recipient
//     results, the final state and what the server announced.
//
//   smtp_client_driver dsn --mta HOST --sender ADDR --queue-id ID --original FILE [--full]
//       --rcpt ADDR|ACTION|STATUS|DIAGNOSTIC ...
//     Prints the DSN daemon/dsn.hpp builds.

#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "daemon/dsn.hpp"
#include "daemon/smtp_client.hpp"

using namespace sluice;
using namespace sluice::smtp;

namespace {

struct MessageSpec {
    std::string from;
    std::vector<std::string> to;
    std::string data;
};

bool read_file(const std::string& path, std::string& out) {
    std::ifstream f(path, std::ios::binary);
    if (!f) {
        return false;
    }
    std::ostringstream ss;
    ss << f.rdbuf();
    out = ss.str();
    return true;
}

std::vector<std::string> split(const std::string& s, char sep) {
    std::vector<std::string> out;
    std::size_t pos = 0;
    for (;;) {
        std::size_t e = s.find(sep, pos);
        out.push_back(s.substr(pos, e - pos));
        if (e == std::string::npos) {
            return out;
        }
        pos = e + 1;
    }
}

std::string json_string(std::string_view s) {
    std::string out = "\"";
    for (char c : s) {
        auto u = static_cast<unsigned char>(c);
        if (c == '"' || c == '\\') {
            out += '\\';
            out += c;
        } else if (u < 0x20) {
            char buf[8];
            std::snprintf(buf, sizeof buf, "\\u%04x", u);
            out += buf;
        } else {
            out += c;
        }
    }
    return out + "\"";
}

int connect_to(const std::string& host, const std::string& port) {
    addrinfo hints{};
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
    addrinfo* res = nullptr;
    if (getaddrinfo(host.c_str(), port.c_str(), &hints, &res) != 0) {
        return -1;
    }
    int fd = socket(res->ai_family, SOCK_STREAM, 0);
    if (fd >= 0 && connect(fd, res->ai_addr, res->ai_addrlen) != 0) {
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    return fd;
}

// Writes everything the client has, chunk after chunk. False if the socket failed or the
// client's timeout for a write expired (the client has been told).
bool flush(Client& c, int fd) {
    while (!c.output().empty()) {
        std::string& out = c.output();
        std::size_t done = 0;
        while (done < out.size()) {
            pollfd p{fd, POLLOUT, 0};
            int n = poll(&p, 1, static_cast<int>(c.current_timeout().count()));
            if (n == 0) {
                c.timed_out();
                return false;
            }
            ssize_t w = send(fd, out.data() + done, out.size() - done, MSG_NOSIGNAL);
            if (w < 0 && errno == EINTR) {
                continue;
            }
            if (w <= 0) {
                c.connection_lost();
                return false;
            }
            done += static_cast<std::size_t>(w);
        }
        out.clear();
        c.output_drained();
    }
    return true;
}

int deliver(int argc, char** argv) {
    if (argc < 4) {
        std::cerr << "usage: smtp_client_driver deliver HOST PORT [options] MESSAGE...\n";
        return 2;
    }
    std::string host = argv[2];
    std::string port = argv[3];
    Client::Options opt;
    opt.helo = "driver.example.test";
    std::vector<MessageSpec> msgs;
    MessageSpec cur;
    for (int i = 4; i < argc; ++i) {
        std::string a = argv[i];
        auto value = [&]() -> std::string { return i + 1 < argc ? argv[++i] : ""; };
        if (a == "--helo") {
            opt.helo = value();
        } else if (a == "--timeout-ms") {
            Millis t(std::stoll(value()));
            opt.timeouts = Client::Timeouts{t, t, t, t, t, t, t, t, t};
        } else if (a == "--chunk") {
            opt.chunk = std::stoul(value());
        } else if (a == "--strict-8bitmime") {
            opt.strict_8bitmime = true;
        } else if (a == "--from") {
            cur.from = value();
        } else if (a == "--to") {
            cur.to = split(value(), ',');
        } else if (a == "--data") {
            if (!read_file(value(), cur.data)) {
                std::cerr << "cannot read " << argv[i] << "\n";
                return 2;
            }
            msgs.push_back(std::move(cur));
            cur = MessageSpec{};
        } else {
            std::cerr << "unknown argument " << a << "\n";
            return 2;
        }
    }

    int fd = connect_to(host, port);
    if (fd < 0) {
        std::cerr << "cannot connect to " << host << ":" << port << "\n";
        return 1;
    }
    Client c(opt);
    c.connected();
    std::vector<std::vector<RecipientResult>> results;
    std::size_t next = 0;
    auto give = [&]() {
        if (next < msgs.size()) {
            OutboundMessage m;
            m.sender = msgs[next].from;
            m.recipients = msgs[next].to;
            m.data = msgs[next].data;
            if (c.send_message(m)) {
                ++next;
            }
        }
    };
    give();
    char buf[16384];
    while (!c.finished()) {
        flush(c, fd);
        while (c.transaction_done()) {
            results.push_back(c.take_results());
        }
        if (c.reusable()) {
            if (next < msgs.size()) {
                give();
                continue;
            }
            c.quit();
            continue;
        }
        if (c.finished()) {
            break;
        }
        if (!c.output().empty()) {
            continue;
        }
        pollfd p{fd, POLLIN, 0};
        int n = poll(&p, 1, static_cast<int>(c.current_timeout().count()));
        if (n == 0) {
            c.timed_out();
            continue;
        }
        ssize_t r = recv(fd, buf, sizeof buf, 0);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r <= 0) {
            c.connection_lost();
            continue;
        }
        c.receive(std::string_view(buf, static_cast<std::size_t>(r)));
    }
    while (c.transaction_done()) {
        results.push_back(c.take_results());
    }
    close(fd);

    std::ostringstream js;
    js << "{\"transactions\":[";
    for (std::size_t t = 0; t < results.size(); ++t) {
        js << (t ? "," : "") << "[";
        for (std::size_t i = 0; i < results[t].size(); ++i) {
            const auto& r = results[t][i];
            js << (i ? "," : "") << "{\"rcpt\":" << json_string(msgs[t].to[i])
               << ",\"kind\":" << json_string(to_string(r.kind)) << ",\"code\":" << r.code
               << ",\"enhanced\":" << json_string(r.enhanced) << ",\"text\":" << json_string(r.text)
               << ",\"in_reply_to\":" << json_string(r.in_reply_to)
               << ",\"diagnostic\":" << json_string(r.diagnostic()) << "}";
        }
        js << "]";
    }
    js << "],\"not_sent\":" << (msgs.size() - next)
       << ",\"state\":" << json_string(to_string(c.state()))
       << ",\"close_reason\":" << json_string(c.close_reason())
       << ",\"size_limit\":" << c.server_size_limit() << ",\"supports\":[";
    bool first = true;
    for (const char* ext :
         {"PIPELINING", "SIZE", "8BITMIME", "SMTPUTF8", "STARTTLS", "ENHANCEDSTATUSCODES"}) {
        if (c.server_supports(ext)) {
            js << (first ? "" : ",") << json_string(ext);
            first = false;
        }
    }
    js << "]}\n";
    std::cout << js.str();
    return 0;
}

int make_dsn(int argc, char** argv) {
    dsn::DsnInput in;
    std::string original;
    in.now = std::chrono::system_clock::now();
    in.arrival = in.now - std::chrono::minutes(30);
    for (int i = 2; i < argc; ++i) {
        std::string a = argv[i];
        auto value = [&]() -> std::string { return i + 1 < argc ? argv[++i] : ""; };
        if (a == "--mta") {
            in.reporting_mta = value();
        } else if (a == "--sender") {
            in.sender = value();
        } else if (a == "--queue-id") {
            in.queue_id = value();
        } else if (a == "--original") {
            if (!read_file(value(), original)) {
                std::cerr << "cannot read " << argv[i] << "\n";
                return 2;
            }
        } else if (a == "--full") {
            in.include_message = true;
        } else if (a == "--rcpt") {
            auto f = split(value(), '|');
            if (f.size() != 4) {
                std::cerr << "--rcpt ADDR|failed|STATUS|DIAGNOSTIC\n";
                return 2;
            }
            dsn::RecipientReport r;
            r.address = f[0];
            r.action = f[1] == "delayed" ? dsn::Action::delayed : dsn::Action::failed;
            r.status = f[2];
            r.diagnostic = f[3];
            r.last_attempt = in.now;
            if (r.action == dsn::Action::delayed) {
                r.will_retry_until = in.now + std::chrono::hours(96);
            }
            in.recipients.push_back(r);
        } else {
            std::cerr << "unknown argument " << a << "\n";
            return 2;
        }
    }
    in.original = original;
    std::cout << dsn::build_dsn(in);
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    std::string mode = argc > 1 ? argv[1] : "";
    if (mode == "deliver") {
        return deliver(argc, argv);
    }
    if (mode == "dsn") {
        return make_dsn(argc, argv);
    }
    std::cerr << "usage: smtp_client_driver deliver|dsn ...\n";
    return 2;
}
