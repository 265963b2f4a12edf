#pragma once
// SMTP AUTH credentials (RFC 4954): password hashes of the `users` map, the format of its
// values, the sender addresses a user may use, and the throttle on failed attempts.
//
// Trust: passwords and user names come from the network (already shaped by
// daemon/sasl.hpp); the `users` map is the operator's. Promises:
// - Hashes are the system's crypt(3) (libxcrypt): yescrypt "$y$" with the library's
//   default cost (about 18 ms here), or SHA-512-crypt "$6$" when yescrypt is missing;
//   only "$y$" and "$6$" hashes ever verify (no DES, MD5, plaintext, or locked "!"/"*").
// - verify_password compares the full computed hash with the stored one in constant time.
//   It BLOCKS for the hash's cost: run it on the thread pool, never on a loop thread.
//   For an unknown user, verify against dummy_hash() so the answer takes as long.
// - Passwords never appear in errors or logs; buffers that held them are wiped.
// - AuthThrottle is thread-safe (one mutex, taken once per AUTH attempt) and bounded.
//
// `users` map value (one token: storage/map_source.cpp forbids blanks in it):
//     HASH[;senders=ADDR,ADDR,...]
// ADDR is `local@domain` (local part exact, domain case-insensitive), `@domain` (any
// address at that domain) or `<>` (the null reverse-path). With a listener's
// sender_login_match = true, an authenticated user may use as MAIL FROM only the listed
// addresses, or its own user name when that is an address.
//     alice@example.test  $y$j9T$...$...;senders=alice@example.test,@sales.example.test

#include <chrono>
#include <cstddef>
#include <functional>
#include <list>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "common/net.hpp"

namespace sluice::auth {

namespace limits {
// libxcrypt's CRYPT_MAX_PASSPHRASE_SIZE (512) less the NUL: longer ones cannot be hashed.
inline constexpr std::size_t kMaxPassword = 511;  // as daemon/sasl.hpp
inline constexpr std::size_t kMaxSenders = 100;
}  // namespace limits

// A new salted hash of `password` ("$y$j9T$salt$hash"). nullopt and `error` when the
// password is empty, too long or holds a NUL (crypt(3) would stop there), or crypt fails.
std::optional<std::string> hash_password(std::string_view password, std::string& error);

// BLOCKING. True only when `stored_hash` is an acceptable hash (acceptable_hash) of
// `password`.
bool verify_password(std::string_view stored_hash, std::string_view password);

// "$y$..." or "$6$..." made only of crypt(3)'s alphabet.
bool acceptable_hash(std::string_view hash);

// A hash of the same kind and cost as hash_password's, of a password nobody knows;
// computed once (blocking) on first use.
const std::string& dummy_hash();

struct UserEntry {
    std::string hash;
    std::vector<std::string> senders;  // as written: "a@x.test", "@x.test", "<>"
};

// Parses a `users` map value. nullopt and `error` when the hash is not acceptable or a
// sender is malformed (or the entry has an unknown ";key=" field).
std::optional<UserEntry> parse_user_entry(std::string_view value, std::string& error);
// The map value for `entry` (the inverse of parse_user_entry).
std::string format_user_entry(const UserEntry& entry);
// Whether `user` (authenticated, with `entry`) may use `canonical_sender` (the policy's
// canonical address: local part as sent, domain lower-case; "" for the null path).
bool sender_allowed(const UserEntry& entry, std::string_view user,
                    std::string_view canonical_sender);

// Failed AUTH attempts per client and per user, as leaky buckets: each attempt adds 1,
// and a bucket drains `limit` per `window`, so after a burst one more attempt is allowed
// every window/limit. IPv6 clients are counted per /64 (one host owns a whole /64).
//
// Protocol: allow(ip, user) before checking a password; it CHARGES the attempt when it
// returns true, so parallel connections cannot race past the limit. Then exactly one
// record(ip, user, ok) with the outcome: ok refunds the charge and remembers (ip, user) as
// good for `trust`, which exempts that pair from the per-user limit (an attacker spreading
// guesses over many addresses locks the user out everywhere except where the user has
// logged in before). With user "", allow() checks and charges only the client.
class AuthThrottle {
  public:
    using Clock = std::chrono::steady_clock;
    using Now = std::function<Clock::time_point()>;

    struct Limits {
        unsigned per_ip = 5;
        unsigned per_user = 10;
        std::chrono::seconds window{600};
        std::chrono::seconds trust{86400};
        std::size_t max_entries = 100000;  // oldest untouched entries go first
    };

    AuthThrottle();
    explicit AuthThrottle(Limits limits, Now now = Clock::now);
    AuthThrottle(const AuthThrottle&) = delete;
    AuthThrottle& operator=(const AuthThrottle&) = delete;

    bool allow(const IpAddr& ip, std::string_view user);
    void record(const IpAddr& ip, std::string_view user, bool ok);

    std::size_t size() const;  // entries held (for tests and a gauge)

  private:
    struct Entry {
        double level = 0;           // charged attempts not yet drained
        Clock::time_point updated;  // when `level` was last brought up to date
        std::list<const std::string*>::iterator lru;
    };
    using Map = std::unordered_map<std::string, Entry>;

    Entry& touch(const std::string& key, Clock::time_point now);
    double drained(const Entry& e, double limit, Clock::time_point now) const;
    void evict(Clock::time_point now);

    Limits limits_;
    Now now_;
    mutable std::mutex mutex_;
    Map entries_;
    std::list<const std::string*> lru_;  // front: most recently touched
};

}  // namespace sluice::auth
