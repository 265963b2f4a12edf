// daemon/sasl: RFC 4954 exchanges for PLAIN (RFC 4616) and LOGIN, and strict base64.

#include "daemon/sasl.hpp"

#include <gtest/gtest.h>

#include <string>

namespace sluice::sasl {
namespace {

using namespace std::string_literals;
using Kind = Step::Kind;

std::string b64(const std::string& s) {
    return base64_encode(s);
}

// --- base64 ---------------------------------------------------------------------------

TEST(Base64, Rfc4648TestVectors) {
    // RFC 4648 §10.
    const std::pair<std::string, std::string> vectors[] = {
        {"", ""},
        {"f", "Zg=="},
        {"fo", "Zm8="},
        {"foo", "Zm9v"},
        {"foob", "Zm9vYg=="},
        {"fooba", "Zm9vYmE="},
        {"foobar", "Zm9vYmFy"},
    };
    for (const auto& [plain, enc] : vectors) {
        EXPECT_EQ(base64_encode(plain), enc);
        auto dec = base64_decode(enc);
        ASSERT_TRUE(dec) << enc;
        EXPECT_EQ(*dec, plain);
    }
}

TEST(Base64, AllByteValuesRoundTrip) {
    std::string all;
    for (int i = 0; i < 256; ++i) {
        all.push_back(static_cast<char>(i));
    }
    for (std::size_t n = 0; n <= all.size(); n += 37) {
        std::string s = all.substr(0, n);
        EXPECT_EQ(base64_decode(base64_encode(s)), s);
    }
}

TEST(Base64, StrictDecoderRejectsNonCanonicalInput) {
    const char* bad[] = {
        "Zg",        // missing padding
        "Zg=",       // short padding
        "Zm9v ",     // trailing blank
        " Zm9v",     // leading blank
        "Zm 9v",     // blank inside
        "Zm9v\r\n",  // line break
        "Zh==",      // non-zero pad bits (canonical is Zg==)
        "Zm9=",      // non-zero pad bits (canonical is Zm8=)
        "Z===",      // too much padding
        "====",      // padding only
        "Zg==Zm9v",  // padding in the middle
        "Zm9v=",     // padding after a full quantum
        "Zm-v",      // base64url alphabet
        "Zm_v",     "*",
    };
    for (const char* b : bad) {
        EXPECT_FALSE(base64_decode(b)) << '"' << b << '"';
    }
    EXPECT_FALSE(base64_decode("Zm9v\0AAA"s));
}

// --- mechanisms and the AUTH arguments ------------------------------------------------

TEST(Sasl, MechanismNamesAreCaseInsensitive) {
    EXPECT_EQ(parse_mechanism("plain"), Mechanism::plain);
    EXPECT_EQ(parse_mechanism("Login"), Mechanism::login);
    EXPECT_FALSE(parse_mechanism("CRAM-MD5"));
    EXPECT_FALSE(parse_mechanism("PLAINX"));
    EXPECT_FALSE(parse_mechanism(""));
    EXPECT_EQ(kMechanisms, "PLAIN LOGIN");
}

TEST(Sasl, UnknownOrMissingMechanism) {
    SaslExchange ex;
    Step s = ex.start("CRAM-MD5");
    EXPECT_EQ(s.kind, Kind::error);
    EXPECT_EQ(s.reply, Reply::auth_mechanism);
    EXPECT_EQ(reply_line(s.reply), "504 5.5.4 Unrecognized authentication type");
    EXPECT_FALSE(ex.active());
    s = ex.start("");
    EXPECT_EQ(s.kind, Kind::error);
    EXPECT_EQ(s.reply, Reply::syntax_params);
    s = ex.start("PLAIN AGFsaWNlAHNlY3JldA== extra");
    EXPECT_EQ(s.kind, Kind::error);
    EXPECT_EQ(s.reply, Reply::syntax_params);
    s = ex.start("PLAIN  AGFsaWNlAHNlY3JldA==");  // two blanks
    EXPECT_EQ(s.kind, Kind::error);
}

// --- PLAIN ----------------------------------------------------------------------------

TEST(SaslPlain, InitialResponse) {
    SaslExchange ex;
    Step s = ex.start("PLAIN " + b64("\0alice\0s3cret pass"s));
    ASSERT_EQ(s.kind, Kind::done) << s.reason;
    EXPECT_EQ(s.credentials.user, "alice");
    EXPECT_EQ(s.credentials.password, "s3cret pass");
    EXPECT_EQ(s.credentials.authzid, "");
    EXPECT_FALSE(ex.active());
    EXPECT_EQ(ex.mechanism(), Mechanism::plain);
}

TEST(SaslPlain, EmptyChallengeThenResponse) {
    SaslExchange ex;
    Step s = ex.start("plain");
    ASSERT_EQ(s.kind, Kind::challenge);
    EXPECT_EQ(s.challenge, "");
    EXPECT_TRUE(ex.active());
    std::string reply;
    append_reply(reply, Reply::auth_challenge, s.challenge);
    EXPECT_EQ(reply, "334 \r\n");  // RFC 4954 §4: "334 " and an empty challenge
    s = ex.respond(b64("alice@example.test\0alice@example.test\0pw"s));
    ASSERT_EQ(s.kind, Kind::done) << s.reason;
    EXPECT_EQ(s.credentials.user, "alice@example.test");
    EXPECT_EQ(s.credentials.authzid, "alice@example.test");
    EXPECT_EQ(s.credentials.password, "pw");
    EXPECT_FALSE(ex.active());
}

TEST(SaslPlain, AuthzidOtherThanTheUserIsRefused) {
    SaslExchange ex;
    Step s = ex.start("PLAIN " + b64("admin\0alice\0pw"s));
    EXPECT_EQ(s.kind, Kind::error);
    EXPECT_EQ(s.reply, Reply::auth_failed);
    EXPECT_EQ(reply_line(s.reply), "535 5.7.8 Authentication credentials invalid");
    EXPECT_FALSE(ex.active());
}

TEST(SaslPlain, MalformedMessagesFailLikeAWrongPassword) {
    const std::string bad[] = {
        "",                    // empty ("=" initial response)
        "alice",               // no NUL at all
        "\0alice"s,            // one NUL: no password
        "\0\0pw"s,             // empty user
        "\0alice\0"s,          // empty password
        "\0alice\0pw\0more"s,  // NUL in the password
        "\0al\x01ice\0pw"s,    // control character in the user name
        "\0al\xffice\0pw"s,    // not UTF-8
        "\0\xc0\xaf\0pw"s,     // overlong UTF-8
        "\0" + std::string(256, 'u') + "\0pw"s,
        "\0alice\0"s + std::string(limits::kMaxPassword + 1, 'p'),
    };
    for (const auto& m : bad) {
        SaslExchange ex;
        Step s = ex.start("PLAIN " + (m.empty() ? "=" : b64(m)));
        EXPECT_EQ(s.kind, Kind::error) << s.reason;
        EXPECT_EQ(s.reply, Reply::auth_failed) << s.reason;
        EXPECT_FALSE(s.reason.empty());
        EXPECT_EQ(s.reason.find("pw"), std::string::npos) << "no password in the reason";
    }
    // The limits themselves are accepted.
    SaslExchange ex;
    Step s = ex.start("PLAIN " + b64("\0"s + std::string(255, 'u') + "\0"s +
                                     std::string(limits::kMaxPassword, 'p')));
    EXPECT_EQ(s.kind, Kind::done) << s.reason;
    s = ex.start("PLAIN " + b64("\0j\xc3\xbcrgen\0pw"s));  // UTF-8 user name
    EXPECT_EQ(s.kind, Kind::done) << s.reason;
}

TEST(SaslPlain, BadBase64AndCancel) {
    SaslExchange ex;
    Step s = ex.start("PLAIN AGFsaWNlAHNlY3JldA");  // unpadded
    EXPECT_EQ(s.kind, Kind::error);
    EXPECT_EQ(s.reply, Reply::auth_bad_base64);
    EXPECT_EQ(reply_line(s.reply), "501 5.5.2 Cannot decode response");

    s = ex.start("PLAIN");
    ASSERT_EQ(s.kind, Kind::challenge);
    s = ex.respond("not base64!");
    EXPECT_EQ(s.reply, Reply::auth_bad_base64);
    EXPECT_FALSE(ex.active());

    s = ex.start("PLAIN");
    s = ex.respond("*");
    EXPECT_EQ(s.kind, Kind::error);
    EXPECT_EQ(s.reply, Reply::auth_cancelled);
    EXPECT_EQ(reply_line(s.reply), "501 5.0.0 Authentication cancelled");
    EXPECT_FALSE(ex.active());
    // "*" is not a cancel as an initial response, just bad base64.
    s = ex.start("PLAIN *");
    EXPECT_EQ(s.reply, Reply::auth_bad_base64);
}

TEST(SaslPlain, LineLimitOfRfc4954) {
    SaslExchange ex;
    ASSERT_EQ(ex.start("PLAIN").kind, Kind::challenge);
    Step s = ex.respond(std::string(limits::kMaxLine + 1, 'A'));
    EXPECT_EQ(s.kind, Kind::error);
    EXPECT_EQ(s.reply, Reply::line_too_long);
    // A line at the limit is decoded (and then fails on its content, not its length).
    ASSERT_EQ(ex.start("PLAIN").kind, Kind::challenge);
    std::string at_limit(limits::kMaxLine - limits::kMaxLine % 4, 'A');
    s = ex.respond(at_limit);
    EXPECT_EQ(s.reply, Reply::auth_failed);
}

TEST(SaslPlain, RespondWithoutExchangeIsAnError) {
    SaslExchange ex;
    Step s = ex.respond("AGFsaWNlAHB3");
    EXPECT_EQ(s.kind, Kind::error);
    EXPECT_NE(s.reply, Reply::auth_ok);
}

// --- LOGIN ----------------------------------------------------------------------------

TEST(SaslLogin, TwoChallenges) {
    SaslExchange ex;
    Step s = ex.start("LOGIN");
    ASSERT_EQ(s.kind, Kind::challenge);
    EXPECT_EQ(base64_decode(s.challenge), "Username:");
    std::string reply;
    append_reply(reply, Reply::auth_challenge, s.challenge);
    EXPECT_EQ(reply, "334 VXNlcm5hbWU6\r\n");
    s = ex.respond(b64("bob"));
    ASSERT_EQ(s.kind, Kind::challenge);
    EXPECT_EQ(base64_decode(s.challenge), "Password:");
    EXPECT_TRUE(ex.active());
    s = ex.respond(b64("hunter2"));
    ASSERT_EQ(s.kind, Kind::done) << s.reason;
    EXPECT_EQ(s.credentials.user, "bob");
    EXPECT_EQ(s.credentials.password, "hunter2");
    EXPECT_FALSE(ex.active());
    EXPECT_EQ(ex.mechanism(), Mechanism::login);
}

TEST(SaslLogin, UserAsInitialResponse) {
    SaslExchange ex;
    Step s = ex.start("LOGIN " + b64("bob"));
    ASSERT_EQ(s.kind, Kind::challenge);
    EXPECT_EQ(base64_decode(s.challenge), "Password:");
    s = ex.respond(b64("pw"));
    ASSERT_EQ(s.kind, Kind::done);
    EXPECT_EQ(s.credentials.user, "bob");
}

TEST(SaslLogin, CancelAndBadInputAtEachStep) {
    SaslExchange ex;
    ex.start("LOGIN");
    EXPECT_EQ(ex.respond("*").reply, Reply::auth_cancelled);
    ex.start("LOGIN");
    ex.respond(b64("bob"));
    EXPECT_EQ(ex.respond("*").reply, Reply::auth_cancelled);
    EXPECT_FALSE(ex.active());
    ex.start("LOGIN");
    EXPECT_EQ(ex.respond("=").reply, Reply::auth_bad_base64) << "'=' only as initial response";
    ex.start("LOGIN");
    EXPECT_EQ(ex.respond("").reply, Reply::auth_failed);  // empty user name
    ex.start("LOGIN");
    ex.respond(b64("bob"));
    EXPECT_EQ(ex.respond(b64("a\0b"s)).reply, Reply::auth_failed);  // NUL in password
    // A new AUTH after a failure starts clean (no user left over from the last one).
    Step s = ex.start("PLAIN " + b64("\0carol\0pw"s));
    ASSERT_EQ(s.kind, Kind::done);
    EXPECT_EQ(s.credentials.user, "carol");
}

}  // namespace
}  // namespace sluice::sasl
