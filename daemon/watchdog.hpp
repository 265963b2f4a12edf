#pragma once
// Is every shard's loop still answering? The main thread posts a probe to every shard
// once a period; a shard answers when its loop runs the probe. When every shard answered
// the last round, a new round starts and, under a systemd watchdog (WatchdogSec=, read
// from $WATCHDOG_USEC, sd_watchdog_enabled(3)), WATCHDOG=1 is sent. A shard stuck in a
// callback never answers, the pings stop, and systemd restarts the service: a daemon
// whose main thread still runs but which no longer serves mail is not reported healthy.
//
// The same probe measures each shard's loop lag (the time from posting to running: what
// a ready callback waits before its loop gets to it), served as
// sluice_shard_loop_lag_seconds{shard}; an unanswered probe's lag keeps growing.
//
// Trust: $WATCHDOG_USEC and $WATCHDOG_PID come from systemd or the operator. Main thread
// only, except the probes, which run on the shards and touch only their own Beat.

#include <uv.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <vector>

#include "daemon/notify.hpp"
#include "daemon/shard.hpp"

namespace sluice {

class Watchdog {
  public:
    // Without a systemd watchdog, probes still run, once a second, for the lag metric.
    static constexpr std::chrono::milliseconds kProbePeriod{1000};

    // `shards` is the server's list; it must outlive the watchdog's timer (close()).
    Watchdog(uv_loop_t* loop, Notifier& notify, const std::vector<std::unique_ptr<Shard>>& shards);
    Watchdog(const Watchdog&) = delete;
    Watchdog& operator=(const Watchdog&) = delete;

    // Reads $WATCHDOG_USEC/$WATCHDOG_PID and starts probing.
    void start();
    void close();

    // The systemd watchdog timeout (0: none) and the probe period derived from it.
    std::chrono::microseconds timeout() const { return timeout_; }
    std::chrono::milliseconds period() const { return period_; }
    // Per shard, seconds: the last answered probe's lag, or how long the pending one has
    // waited if that is longer.
    std::vector<double> loop_lag_seconds() const;
    std::uint64_t pings() const { return pings_; }

  private:
    struct Beat {
        std::atomic<std::uint64_t> round{0};
        std::atomic<std::int64_t> answered_ns{0};  // steady clock, when the probe ran
    };
    static void on_timer(uv_timer_t* t);
    void tick();

    uv_loop_t* loop_;
    Notifier& notify_;
    const std::vector<std::unique_ptr<Shard>>& shards_;
    std::vector<std::shared_ptr<Beat>> beats_;
    uv_timer_t timer_{};
    bool started_ = false;
    std::chrono::microseconds timeout_{0};
    std::chrono::milliseconds period_{kProbePeriod};
    std::uint64_t round_ = 0;
    std::int64_t posted_ns_ = 0;
    std::vector<double> last_lag_;
    std::vector<bool> reported_stall_;
    std::uint64_t pings_ = 0;
};

}  // namespace sluice
