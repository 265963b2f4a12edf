#include "common/ascii.hpp"

#include <gtest/gtest.h>

using namespace sluice;

TEST(Ascii, FoldsOnlyAsciiLetters) {
    EXPECT_TRUE(ascii::iequals("MAIL FROM", "mail from"));
    EXPECT_TRUE(ascii::iequals("", ""));
    EXPECT_FALSE(ascii::iequals("mail", "mai"));
    EXPECT_FALSE(ascii::iequals("[", "{"));  // 0x5B and 0x7B differ by 0x20 but are no letters
    EXPECT_FALSE(ascii::iequals("@", "`"));
    EXPECT_FALSE(ascii::iequals("\xc3\x84", "\xc3\xa4"));  // UTF-8 Ä and ä: not ASCII, not folded
    EXPECT_EQ(ascii::lower("Example.TEST\xc3\x84"), "example.test\xc3\x84");
    EXPECT_EQ(ascii::upper("ehlo x[1]"), "EHLO X[1]");
    EXPECT_TRUE(ascii::istarts_with("Content-Length: 0", "content-length"));
    EXPECT_FALSE(ascii::istarts_with("Con", "content"));
    EXPECT_TRUE(ascii::has_upper("userA"));
    EXPECT_FALSE(ascii::has_upper("user\xc3\x84"));
}

TEST(Ascii, EveryByteFoldsLikeTheCLocale) {
    for (int i = 0; i < 256; ++i) {
        char c = static_cast<char>(i);
        bool letter = (i >= 'A' && i <= 'Z') || (i >= 'a' && i <= 'z');
        EXPECT_EQ(ascii::to_lower(c), letter ? static_cast<char>(i | 0x20) : c) << i;
        EXPECT_EQ(ascii::to_upper(c), letter ? static_cast<char>(i & ~0x20) : c) << i;
    }
}

TEST(Ascii, PrintableMasksControlCharacters) {
    EXPECT_EQ(ascii::printable("a\tb\r\n\x1b[2J\x7f" "c"), "a?b???[2J?c");
    EXPECT_EQ(ascii::printable("j\xc3\xbcrgen"), "j\xc3\xbcrgen");  // UTF-8 passes
    EXPECT_EQ(ascii::printable("250 ok\r\x01x", ' '), "250 ok  x");
    EXPECT_EQ(ascii::printable_ascii("j\xc3\xbcrgen\x01"), "j??rgen?");
    EXPECT_EQ(ascii::printable_ascii("plain text ~"), "plain text ~");
}
