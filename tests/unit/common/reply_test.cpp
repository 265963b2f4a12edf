#include "common/reply.hpp"

#include <gtest/gtest.h>

using namespace sluice;

TEST(Reply, EnhancedCodeOnCommandReplies) {
    std::string out;
    append_reply(out, Reply::size_exceeded);
    EXPECT_EQ(out, "552 5.3.4 Message size exceeds fixed limit\r\n");
}

TEST(Reply, GreetingHasNoEnhancedCode) {
    EXPECT_EQ(reply_line(Reply::greeting, "mx.example.test"), "220 mx.example.test ESMTP Sluice");
}

TEST(Reply, ArgumentCannotInjectLines) {
    EXPECT_EQ(reply_line(Reply::queued, "AB\r\n250 fake"), "250 2.0.0 Ok: queued as AB250 fake");
}

TEST(Reply, CustomTextKeepsCodes) {
    EXPECT_EQ(reply_line(Reply::blocked, {}, "go away"), "554 5.7.1 go away");
}

TEST(Reply, EveryRowHasAClassConsistentEnhancedCode) {
    for (int i = 0; i < static_cast<int>(Reply::count_); ++i) {
        const auto& s = reply_spec(static_cast<Reply>(i));
        ASSERT_GE(s.code, 200);
        ASSERT_LT(s.code, 600);
        if (!s.enhanced.empty()) {
            // RFC 3463 §2: the class digit matches the basic code's first digit (2, 4, 5).
            int cls = s.code / 100 == 3 ? 2 : s.code / 100;
            EXPECT_EQ(s.enhanced[0] - '0', cls) << "row " << i;
        }
    }
}
