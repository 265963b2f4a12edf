#pragma once
// A received message as the session hands it to storage: the envelope exactly as the
// policy decided it (canonical addresses) and the content exactly as it will be
// forwarded (CRLF line endings, dot-stuffing removed, our Received: header first).

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/config.hpp"

namespace sluice::storage {

struct Recipient {
    std::string address;     // canonical form that was decided on
    std::string deliver_to;  // mailbox after local_addresses/catch_all rewriting (or = address)
    std::string code;        // the decision code that accepted it (L101, G108, ...)
    Transport transport;     // where it goes
};

struct Message {
    std::string id;      // queue id, unique per host
    std::string sender;  // canonical, empty for the null sender <>
    std::vector<Recipient> recipients;
    std::string data;  // the content, CRLF, ends with CRLF
    // Facts kept for logs, bounces and `queue purge` filters.
    std::string client;
    std::string helo;
    std::string listener;
    std::string auth_user;
    std::chrono::system_clock::time_point received_at;
};

// The result of handing a message to storage. Only `ok` allows the 250 reply.
enum class CommitStatus : std::uint8_t {
    ok,
    io_error,  // write or fsync failed: 451 4.3.0
    no_space,  // disk (nearly) full: 452 4.3.1
};

}  // namespace sluice::storage
