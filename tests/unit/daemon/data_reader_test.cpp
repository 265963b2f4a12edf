#include "daemon/data_reader.hpp"

#include <gtest/gtest.h>

using namespace sluice::smtp;

namespace {

struct Out {
    DataReader::Status status;
    std::string content;
    std::string rest;  // bytes after the end of data
    bool long_line = false;
    bool nul = false;
    bool oversized = false;
};

Out read_all(const std::string& in, std::size_t step, std::size_t max = 1 << 20) {
    DataReader r(max);
    Out o{DataReader::Status::need_more, {}, {}};
    for (std::size_t pos = 0; pos < in.size(); pos += step) {
        std::string chunk = in.substr(pos, step);
        auto res = r.feed(chunk, o.content);
        if (res.status != DataReader::Status::need_more) {
            o.status = res.status;
            o.rest = chunk.substr(res.consumed) + in.substr(std::min(in.size(), pos + step));
            break;
        }
        EXPECT_EQ(res.consumed, chunk.size());
    }
    o.long_line = r.long_line();
    o.nul = r.has_nul();
    o.oversized = r.oversized();
    return o;
}

}  // namespace

TEST(DataReader, UnstuffsAndStopsAtEndOfDataAtEveryFragmentSize) {
    std::string in = "Subject: x\r\n\r\n..leading dot\r\n.\r\nnot the end\r\n.\r\nQUIT\r\n";
    // Per RFC 5321 §4.5.2 "..leading dot" becomes ".leading dot" and ". " lines end only on
    // ".\r\n".
    in = "Subject: x\r\n\r\n..leading dot\r\n.x\r\nbody\r\n.\r\nQUIT\r\n";
    for (std::size_t step = 1; step <= in.size(); ++step) {
        auto o = read_all(in, step);
        ASSERT_EQ(o.status, DataReader::Status::done) << step;
        EXPECT_EQ(o.content, "Subject: x\r\n\r\n.leading dot\r\nx\r\nbody\r\n") << step;
        EXPECT_EQ(o.rest, "QUIT\r\n") << step;
    }
}

TEST(DataReader, EmptyMessage) {
    auto o = read_all(".\r\n", 1);
    EXPECT_EQ(o.status, DataReader::Status::done);
    EXPECT_EQ(o.content, "");
}

TEST(DataReader, SmugglingSequencesAreRejectedNotEnded) {
    // Each of these ends DATA for some lenient MTAs; for us they are protocol errors.
    const char* attacks[] = {
        "a\r\n.\nMAIL FROM:<x@evil.test>\r\n",  // <CR><LF>.<LF>
        "a\n.\r\nMAIL FROM:<x@evil.test>\r\n",  // <LF>.<CR><LF>
        "a\r.\r\nMAIL FROM:<x@evil.test>\r\n",  // <CR>.<CR><LF>
        "a\r\n.\rMAIL FROM:<x@evil.test>\r\n",  // <CR><LF>.<CR>
        "a\n\nb\r\n.\r\n",                      // bare LF in the body
    };
    for (const char* a : attacks) {
        for (std::size_t step : {1u, 2u, 5u, 1000u}) {
            auto o = read_all(a, step);
            EXPECT_TRUE(o.status == DataReader::Status::bare_lf ||
                        o.status == DataReader::Status::bare_cr)
                << a << " step " << step;
        }
    }
}

TEST(DataReader, SizeCapNeverExceeded) {
    std::string line(100, 'x');
    std::string in;
    for (int i = 0; i < 100; ++i) {
        in += line + "\r\n";
    }
    in += ".\r\n";
    auto o = read_all(in, 333, 1000);
    EXPECT_EQ(o.status, DataReader::Status::done);
    EXPECT_TRUE(o.oversized);
    EXPECT_EQ(o.content.size(), 1000u);
}

TEST(DataReader, LineLengthLimit) {
    auto ok = read_all(std::string(998, 'a') + "\r\n.\r\n", 64);
    EXPECT_FALSE(ok.long_line);
    auto bad = read_all(std::string(999, 'a') + "\r\n.\r\n", 64);
    EXPECT_TRUE(bad.long_line);
    EXPECT_EQ(bad.status, DataReader::Status::done);
}

TEST(DataReader, NulIsFlagged) {
    std::string in = std::string("a\0b\r\n", 5) + ".\r\n";
    auto o = read_all(in, 1);
    EXPECT_TRUE(o.nul);
}
