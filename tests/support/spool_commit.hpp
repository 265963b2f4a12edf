#pragma once
// Submits a message and waits for its commit: how a closed-loop client (an SMTP session
// waiting to answer 250) uses the spool, for the crash driver and spool_bench.

#include <condition_variable>
#include <memory>
#include <mutex>

#include "storage/spool.hpp"

namespace sluice::test_support {

inline storage::CommitStatus commit_and_wait(storage::Spool& spool,
                                             std::unique_ptr<storage::Message> msg) {
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
    storage::CommitStatus status = storage::CommitStatus::io_error;
    spool.submit(std::move(msg), [&](storage::CommitStatus s, std::unique_ptr<storage::Message>) {
        std::lock_guard lk(mu);
        status = s;
        done = true;
        cv.notify_one();
    });
    std::unique_lock lk(mu);
    cv.wait(lk, [&] { return done; });
    return status;
}

}  // namespace sluice::test_support
