#include "daemon/sasl.hpp"

#include <array>
#include <cstdint>

#include "common/ascii.hpp"

namespace sluice::sasl {

namespace {

constexpr std::string_view kAlphabet =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

// LOGIN's challenges are fixed by convention (draft-murchison-sasl-login):
// base64("Username:") and base64("Password:").
constexpr std::string_view kLoginUserChallenge = "VXNlcm5hbWU6";
constexpr std::string_view kLoginPasswordChallenge = "UGFzc3dvcmQ6";

constexpr std::array<std::int8_t, 256> decode_table() {
    std::array<std::int8_t, 256> t{};
    for (auto& v : t) {
        v = -1;
    }
    for (std::size_t i = 0; i < kAlphabet.size(); ++i) {
        t[static_cast<unsigned char>(kAlphabet[i])] = static_cast<std::int8_t>(i);
    }
    return t;
}
constexpr auto kDecode = decode_table();

// Well-formed UTF-8 (RFC 3629 §4: no overlongs, no surrogates, nothing above U+10FFFF)
// and no C0/C1 control characters or DEL.
bool clean_utf8(std::string_view s) {
    std::size_t i = 0;
    while (i < s.size()) {
        auto c = static_cast<unsigned char>(s[i]);
        if (c < 0x80) {
            if (c < 0x20 || c == 0x7f) {
                return false;
            }
            ++i;
            continue;
        }
        std::size_t n = 0;
        std::uint32_t cp = 0;
        std::uint32_t min = 0;
        if ((c & 0xe0) == 0xc0) {
            n = 1, cp = c & 0x1f, min = 0x80;
        } else if ((c & 0xf0) == 0xe0) {
            n = 2, cp = c & 0x0f, min = 0x800;
        } else if ((c & 0xf8) == 0xf0) {
            n = 3, cp = c & 0x07, min = 0x10000;
        } else {
            return false;
        }
        if (i + n >= s.size()) {
            return false;
        }
        for (std::size_t k = 1; k <= n; ++k) {
            auto cc = static_cast<unsigned char>(s[i + k]);
            if ((cc & 0xc0) != 0x80) {
                return false;
            }
            cp = (cp << 6) | (cc & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff) ||
            (cp >= 0x80 && cp <= 0x9f)) {
            return false;
        }
        i += n + 1;
    }
    return true;
}

// "" when `id` may be used as an identity, else why not.
std::string_view identity_problem(std::string_view id) {
    if (id.empty()) {
        return "empty user name";
    }
    if (id.size() > limits::kMaxIdentity) {
        return "user name too long";
    }
    if (!clean_utf8(id)) {
        return "user name not clean UTF-8";
    }
    return {};
}

std::string_view password_problem(std::string_view pw) {
    if (pw.empty()) {
        return "empty password";
    }
    if (pw.size() > limits::kMaxPassword) {
        return "password too long";
    }
    if (pw.find('\0') != std::string_view::npos) {
        return "NUL in password";
    }
    return {};
}

Step challenge(std::string_view text) {
    Step s;
    s.kind = Step::Kind::challenge;
    s.challenge = std::string(text);
    return s;
}

}  // namespace

bool valid_identity(std::string_view id) {
    return identity_problem(id).empty();
}

std::optional<Mechanism> parse_mechanism(std::string_view name) {
    if (ascii::iequals(name, "PLAIN")) {
        return Mechanism::plain;
    }
    if (ascii::iequals(name, "LOGIN")) {
        return Mechanism::login;
    }
    return std::nullopt;
}

std::string_view mechanism_name(Mechanism m) {
    return m == Mechanism::plain ? "PLAIN" : "LOGIN";
}

std::optional<std::string> base64_decode(std::string_view text) {
    if (text.size() % 4 != 0) {
        return std::nullopt;
    }
    std::string out;
    out.reserve(text.size() / 4 * 3);
    for (std::size_t i = 0; i < text.size(); i += 4) {
        const bool last = i + 4 == text.size();
        std::size_t pad = 0;
        if (last) {
            pad = text[i + 3] == '=' ? (text[i + 2] == '=' ? 2 : 1) : 0;
        }
        std::uint32_t v[4] = {0, 0, 0, 0};
        for (std::size_t k = 0; k < 4 - pad; ++k) {
            std::int8_t d = kDecode[static_cast<unsigned char>(text[i + k])];
            if (d < 0) {
                return std::nullopt;  // includes '=' anywhere but the final padding
            }
            v[k] = static_cast<std::uint32_t>(d);
        }
        std::uint32_t bits = (v[0] << 18) | (v[1] << 12) | (v[2] << 6) | v[3];
        // RFC 4648 §3.5: the pad bits of the last symbol must be zero (canonical form).
        if ((pad == 2 && (v[1] & 0x0f) != 0) || (pad == 1 && (v[2] & 0x03) != 0)) {
            return std::nullopt;
        }
        out.push_back(static_cast<char>((bits >> 16) & 0xff));
        if (pad < 2) {
            out.push_back(static_cast<char>((bits >> 8) & 0xff));
        }
        if (pad < 1) {
            out.push_back(static_cast<char>(bits & 0xff));
        }
    }
    return out;
}

std::string base64_encode(std::string_view data) {
    std::string out;
    out.reserve((data.size() + 2) / 3 * 4);
    std::size_t i = 0;
    for (; i + 3 <= data.size(); i += 3) {
        std::uint32_t b = (static_cast<unsigned char>(data[i]) << 16) |
                          (static_cast<unsigned char>(data[i + 1]) << 8) |
                          static_cast<unsigned char>(data[i + 2]);
        out.push_back(kAlphabet[(b >> 18) & 0x3f]);
        out.push_back(kAlphabet[(b >> 12) & 0x3f]);
        out.push_back(kAlphabet[(b >> 6) & 0x3f]);
        out.push_back(kAlphabet[b & 0x3f]);
    }
    if (std::size_t rest = data.size() - i; rest > 0) {
        std::uint32_t b = static_cast<unsigned char>(data[i]) << 16;
        if (rest == 2) {
            b |= static_cast<unsigned char>(data[i + 1]) << 8;
        }
        out.push_back(kAlphabet[(b >> 18) & 0x3f]);
        out.push_back(kAlphabet[(b >> 12) & 0x3f]);
        out.push_back(rest == 2 ? kAlphabet[(b >> 6) & 0x3f] : '=');
        out.push_back('=');
    }
    return out;
}

Step SaslExchange::error(Reply reply, std::string reason) {
    stage_ = Stage::idle;
    user_.clear();
    Step s;
    s.kind = Step::Kind::error;
    s.reply = reply;
    s.reason = std::move(reason);
    return s;
}

Step SaslExchange::start(std::string_view args) {
    stage_ = Stage::idle;
    user_.clear();
    while (!args.empty() && (args.back() == ' ' || args.back() == '\t')) {
        args.remove_suffix(1);
    }
    if (args.size() > limits::kMaxLine) {
        return error(Reply::line_too_long, "AUTH line too long");
    }
    std::string_view name = args.substr(0, args.find(' '));
    std::optional<std::string_view> initial;
    if (name.size() < args.size()) {
        initial = args.substr(name.size() + 1);
        if (initial->empty() || initial->find_first_of(" \t") != std::string_view::npos) {
            return error(Reply::syntax_params, "AUTH: bad arguments");
        }
    }
    if (name.empty()) {
        return error(Reply::syntax_params, "AUTH without a mechanism");
    }
    auto mech = parse_mechanism(name);
    if (!mech) {
        return error(Reply::auth_mechanism, "unknown mechanism");
    }
    mech_ = *mech;
    std::optional<std::string> response;
    if (initial) {
        // RFC 4954 §4: "=" is an initial response of zero length.
        response = *initial == "=" ? std::optional<std::string>("") : base64_decode(*initial);
        if (!response) {
            return error(Reply::auth_bad_base64, "initial response is not base64");
        }
    }
    if (mech_ == Mechanism::plain) {
        if (response) {
            return finish_plain(*response);
        }
        stage_ = Stage::plain_message;
        return challenge("");  // RFC 4616 §2: PLAIN's server challenge is empty
    }
    if (response) {
        return login_got_user(*response);  // the user name as an initial response
    }
    stage_ = Stage::login_user;
    return challenge(kLoginUserChallenge);
}

Step SaslExchange::respond(std::string_view line) {
    if (stage_ == Stage::idle) {
        return error(Reply::syntax_params, "no AUTH exchange in progress");
    }
    if (line.size() > limits::kMaxLine) {
        return error(Reply::line_too_long, "AUTH response too long");
    }
    if (line == "*") {
        return error(Reply::auth_cancelled, "cancelled by the client");
    }
    auto data = base64_decode(line);
    if (!data) {
        return error(Reply::auth_bad_base64, "response is not base64");
    }
    switch (stage_) {
        case Stage::plain_message:
            return finish_plain(*data);
        case Stage::login_user:
            return login_got_user(*data);
        case Stage::login_password:
            return login_got_password(*data);
        case Stage::idle:
            break;
    }
    return error(Reply::syntax_params, "no AUTH exchange in progress");
}

// RFC 4616 §2: message = [authzid] UTF8NUL authcid UTF8NUL passwd
Step SaslExchange::finish_plain(std::string_view message) {
    std::size_t a = message.find('\0');
    std::size_t b = a == std::string_view::npos ? a : message.find('\0', a + 1);
    if (b == std::string_view::npos) {
        return error(Reply::auth_failed, "malformed PLAIN message");
    }
    std::string_view authzid = message.substr(0, a);
    std::string_view user = message.substr(a + 1, b - a - 1);
    std::string_view password = message.substr(b + 1);
    if (auto p = identity_problem(user); !p.empty()) {
        return error(Reply::auth_failed, std::string(p));
    }
    if (auto p = password_problem(password); !p.empty()) {
        return error(Reply::auth_failed, std::string(p));
    }
    if (!authzid.empty() && authzid != user) {
        return error(Reply::auth_failed, "authorization identity differs from the user");
    }
    stage_ = Stage::idle;
    Step s;
    s.kind = Step::Kind::done;
    s.credentials.authzid = std::string(authzid);
    s.credentials.user = std::string(user);
    s.credentials.password = std::string(password);
    return s;
}

Step SaslExchange::login_got_user(std::string_view user) {
    if (auto p = identity_problem(user); !p.empty()) {
        return error(Reply::auth_failed, std::string(p));
    }
    user_ = std::string(user);
    stage_ = Stage::login_password;
    return challenge(kLoginPasswordChallenge);
}

Step SaslExchange::login_got_password(std::string_view password) {
    if (auto p = password_problem(password); !p.empty()) {
        return error(Reply::auth_failed, std::string(p));
    }
    stage_ = Stage::idle;
    Step s;
    s.kind = Step::Kind::done;
    s.credentials.user = std::move(user_);
    s.credentials.password = std::string(password);
    user_.clear();
    return s;
}

}  // namespace sluice::sasl
