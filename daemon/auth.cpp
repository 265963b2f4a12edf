#include "daemon/auth.hpp"

#include <crypt.h>
#include <string.h>  // explicit_bzero

#include <algorithm>
#include <memory>
#include <random>

#include "common/ascii.hpp"

namespace sluice::auth {

namespace {

// SHA-512-crypt is only the fallback when libxcrypt lacks yescrypt; 100k rounds costs
// about as much as yescrypt's default here (the $6$ default of 5000 is 1 ms: too cheap).
constexpr unsigned long kSha512Rounds = 100000;
constexpr double kEpsilon = 1e-9;
static_assert(limits::kMaxPassword + 1 == CRYPT_MAX_PASSPHRASE_SIZE);

// Wipes and frees crypt(3)'s scratch area, which held the password and the hash.
struct CryptData {
    crypt_data data{};
    ~CryptData() { explicit_bzero(&data, sizeof data); }
};

bool password_usable(std::string_view pw) {
    return !pw.empty() && pw.size() <= limits::kMaxPassword &&
           pw.find('\0') == std::string_view::npos;
}

// Constant time for equal lengths; the length of a hash is no secret.
bool equal_ct(std::string_view a, std::string_view b) {
    if (a.size() != b.size()) {
        return false;
    }
    volatile unsigned char diff = 0;
    for (std::size_t i = 0; i < a.size(); ++i) {
        diff = diff | static_cast<unsigned char>(a[i] ^ b[i]);
    }
    return diff == 0;
}

// `addr` (local@domain, split at the last '@') matches `pattern` (local@domain or @domain).
bool address_matches(std::string_view pattern, std::string_view addr) {
    std::size_t at = addr.rfind('@');
    std::size_t pat = pattern.rfind('@');
    if (at == std::string_view::npos || pat == std::string_view::npos) {
        return false;
    }
    if (!ascii::iequals(pattern.substr(pat + 1), addr.substr(at + 1))) {
        return false;
    }
    return pat == 0 || pattern.substr(0, pat) == addr.substr(0, at);
}

// "" when `s` may be listed as a sender, else why not.
std::string sender_problem(std::string_view s) {
    if (s == "<>") {
        return {};
    }
    std::size_t at = s.rfind('@');
    if (at == std::string_view::npos || at + 1 == s.size()) {
        return "sender \"" + std::string(s) + "\" is not local@domain, @domain or <>";
    }
    for (char c : s) {
        auto u = static_cast<unsigned char>(c);
        if (u <= 0x20 || u == 0x7f || c == '<' || c == '>') {
            return "sender \"" + std::string(s) + "\" has a forbidden character";
        }
    }
    return {};
}

std::string ip_key(const IpAddr& ip) {
    // IPv4 per address; IPv6 per /64.
    std::size_t n = ip.v4 ? 16 : 8;
    return "i" + std::string(reinterpret_cast<const char*>(ip.bytes.data()), n);
}

}  // namespace

std::optional<std::string> hash_password(std::string_view password, std::string& error) {
    if (!password_usable(password)) {
        error = password.empty() ? "empty password"
                : password.size() > limits::kMaxPassword
                    ? "password longer than " + std::to_string(limits::kMaxPassword) + " octets"
                    : "password contains a NUL character";
        return std::nullopt;
    }
    char setting[CRYPT_GENSALT_OUTPUT_SIZE];
    // rbytes = NULL: libxcrypt takes the salt from the OS's random source.
    if (crypt_gensalt_rn("$y$", 0, nullptr, 0, setting, sizeof setting) == nullptr &&
        crypt_gensalt_rn("$6$", kSha512Rounds, nullptr, 0, setting, sizeof setting) == nullptr) {
        error = "crypt_gensalt: no yescrypt or SHA-512 support in libcrypt";
        return std::nullopt;
    }
    auto scratch = std::make_unique<CryptData>();
    std::string pw(password);  // crypt wants a C string
    const char* out = crypt_r(pw.c_str(), setting, &scratch->data);
    explicit_bzero(pw.data(), pw.size());
    if (out == nullptr || out[0] != '$') {
        error = "crypt failed";
        return std::nullopt;
    }
    return std::string(out);
}

bool acceptable_hash(std::string_view hash) {
    if (hash.size() < 4 || !(hash.starts_with("$y$") || hash.starts_with("$6$"))) {
        return false;
    }
    return std::all_of(hash.begin(), hash.end(), [](char c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
               c == '.' || c == '/' || c == '$' || c == '=';
    });
}

bool verify_password(std::string_view stored_hash, std::string_view password) {
    if (!acceptable_hash(stored_hash) || !password_usable(password)) {
        return false;
    }
    auto scratch = std::make_unique<CryptData>();
    std::string pw(password);
    std::string setting(stored_hash);
    const char* out = crypt_r(pw.c_str(), setting.c_str(), &scratch->data);
    explicit_bzero(pw.data(), pw.size());
    // libxcrypt returns a "*0"/"*1" failure token (never equal to a '$' hash) or NULL.
    return out != nullptr && equal_ct(out, stored_hash);
}

const std::string& dummy_hash() {
    static const std::string hash = [] {
        std::string error;
        // A random password per process: nobody can know it.
        std::random_device rd;
        std::string pw = "dummy";
        for (int i = 0; i < 4; ++i) {
            pw += "-" + std::to_string(rd());
        }
        return hash_password(pw, error).value_or("$y$j9T$notahash$notahash");
    }();
    return hash;
}

std::optional<UserEntry> parse_user_entry(std::string_view value, std::string& error) {
    UserEntry entry;
    std::size_t semi = value.find(';');
    entry.hash = std::string(value.substr(0, semi));
    if (!acceptable_hash(entry.hash)) {
        error = "not a yescrypt ($y$) or SHA-512 ($6$) crypt hash";
        return std::nullopt;
    }
    while (semi != std::string_view::npos) {
        std::string_view rest = value.substr(semi + 1);
        std::size_t next = rest.find(';');
        std::string_view field = rest.substr(0, next);
        semi = next == std::string_view::npos ? next : semi + 1 + next;
        if (!field.starts_with("senders=")) {
            error = "unknown field \"" + std::string(field.substr(0, field.find('='))) + "\"";
            return std::nullopt;
        }
        std::string_view list = field.substr(8);
        for (;;) {
            std::size_t comma = list.find(',');
            std::string_view item = list.substr(0, comma);
            if (auto p = sender_problem(item); !p.empty()) {
                error = p;
                return std::nullopt;
            }
            entry.senders.emplace_back(item);
            if (entry.senders.size() > limits::kMaxSenders) {
                error = "more than " + std::to_string(limits::kMaxSenders) + " senders";
                return std::nullopt;
            }
            if (comma == std::string_view::npos) {
                break;
            }
            list.remove_prefix(comma + 1);
        }
    }
    return entry;
}

std::string format_user_entry(const UserEntry& entry) {
    std::string out = entry.hash;
    for (std::size_t i = 0; i < entry.senders.size(); ++i) {
        out += (i == 0 ? ";senders=" : ",");
        out += entry.senders[i];
    }
    return out;
}

bool sender_allowed(const UserEntry& entry, std::string_view user,
                    std::string_view canonical_sender) {
    if (canonical_sender.empty()) {
        return std::find(entry.senders.begin(), entry.senders.end(), "<>") != entry.senders.end();
    }
    if (user.find('@') != std::string_view::npos && user.front() != '@' &&
        address_matches(user, canonical_sender)) {
        return true;
    }
    return std::any_of(entry.senders.begin(), entry.senders.end(), [&](const std::string& s) {
        return s != "<>" && address_matches(s, canonical_sender);
    });
}

// ---------------------------------------------------------------------------------------

AuthThrottle::AuthThrottle() : AuthThrottle(Limits{}) {}

AuthThrottle::AuthThrottle(Limits limits, Now now) : limits_(limits), now_(std::move(now)) {}

double AuthThrottle::drained(const Entry& e, double limit, Clock::time_point now) const {
    double elapsed = std::chrono::duration<double>(now - e.updated).count();
    double window = std::chrono::duration<double>(limits_.window).count();
    return std::max(0.0, e.level - std::max(0.0, elapsed) * limit / window);
}

void AuthThrottle::evict(Clock::time_point now) {
    // Drop up to two stale entries from the cold end on every insert (amortised cleanup),
    // then the coldest ones while the table is full.
    auto idle_enough = [&](const std::string& key, const Entry& e) {
        auto idle = now - e.updated;
        return key[0] == 'p' ? idle >= limits_.trust : idle >= limits_.window;
    };
    for (int i = 0; i < 2 && !lru_.empty(); ++i) {
        auto it = entries_.find(*lru_.back());
        if (!idle_enough(it->first, it->second)) {
            break;
        }
        lru_.pop_back();
        entries_.erase(it);
    }
    while (!lru_.empty() && entries_.size() >= limits_.max_entries) {
        entries_.erase(*lru_.back());
        lru_.pop_back();
    }
}

AuthThrottle::Entry& AuthThrottle::touch(const std::string& key, Clock::time_point now) {
    auto it = entries_.find(key);
    if (it == entries_.end()) {
        evict(now);
        it = entries_.emplace(key, Entry{0, now, {}}).first;
        lru_.push_front(&it->first);
        it->second.lru = lru_.begin();
        return it->second;
    }
    lru_.splice(lru_.begin(), lru_, it->second.lru);
    return it->second;
}

bool AuthThrottle::allow(const IpAddr& ip, std::string_view user) {
    std::lock_guard<std::mutex> lock(mutex_);
    const auto now = now_();
    const std::string ik = ip_key(ip);
    const std::string uk = "u" + std::string(user);
    auto level = [&](const std::string& key, double limit) {
        auto it = entries_.find(key);
        return it == entries_.end() ? 0.0 : drained(it->second, limit, now);
    };
    double ip_level = level(ik, limits_.per_ip);
    if (ip_level + 1 > limits_.per_ip + kEpsilon) {
        return false;
    }
    double user_level = 0;
    if (!user.empty()) {
        user_level = level(uk, limits_.per_user);
        auto pair = entries_.find("p" + ik + '\0' + std::string(user));
        bool trusted = pair != entries_.end() && now - pair->second.updated < limits_.trust;
        if (!trusted && user_level + 1 > limits_.per_user + kEpsilon) {
            return false;
        }
    }
    Entry& ie = touch(ik, now);
    ie.level = ip_level + 1;
    ie.updated = now;
    if (!user.empty()) {
        Entry& ue = touch(uk, now);
        ue.level = user_level + 1;
        ue.updated = now;
    }
    return true;
}

void AuthThrottle::record(const IpAddr& ip, std::string_view user, bool ok) {
    if (!ok) {
        return;  // the attempt was charged by allow()
    }
    std::lock_guard<std::mutex> lock(mutex_);
    const auto now = now_();
    const std::string ik = ip_key(ip);
    auto refund = [&](const std::string& key, double limit) {
        if (auto it = entries_.find(key); it != entries_.end()) {
            it->second.level = std::max(0.0, drained(it->second, limit, now) - 1);
            it->second.updated = now;
        }
    };
    refund(ik, limits_.per_ip);
    if (!user.empty()) {
        refund("u" + std::string(user), limits_.per_user);
        Entry& pe = touch("p" + ik + '\0' + std::string(user), now);
        pe.updated = now;
    }
}

std::size_t AuthThrottle::size() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return entries_.size();
}

}  // namespace sluice::auth
