#include "daemon/watchdog.hpp"

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <string>

#include "common/log.hpp"

namespace sluice {
namespace {

std::int64_t steady_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

// A probe unanswered for this many periods is logged (once per stall).
constexpr std::int64_t kStallPeriods = 3;

}  // namespace

Watchdog::Watchdog(uv_loop_t* loop, Notifier& notify,
                   const std::vector<std::unique_ptr<Shard>>& shards)
    : loop_(loop), notify_(notify), shards_(shards) {}

void Watchdog::start() {
    // sd_watchdog_enabled(3): $WATCHDOG_USEC, and $WATCHDOG_PID if set must be our pid
    // (a child that inherited the environment must not ping for its parent).
    const char* usec = std::getenv("WATCHDOG_USEC");
    const char* pid = std::getenv("WATCHDOG_PID");
    if (usec != nullptr && notify_.enabled() &&
        (pid == nullptr || std::strtoll(pid, nullptr, 10) == static_cast<long long>(::getpid()))) {
        long long v = std::strtoll(usec, nullptr, 10);
        if (v > 0) {
            timeout_ = std::chrono::microseconds(v);
            // A round completes one period after it starts when every loop answers, so a
            // ping goes out every period; a third of the timeout leaves room for one late
            // round (sd_watchdog_enabled(3) asks for at least every half).
            period_ = std::min<std::chrono::milliseconds>(
                kProbePeriod,
                std::max<std::chrono::milliseconds>(
                    std::chrono::milliseconds(1),
                    std::chrono::duration_cast<std::chrono::milliseconds>(timeout_ / 3)));
        }
    }
    beats_.clear();
    for (std::size_t i = 0; i < shards_.size(); ++i) {
        beats_.push_back(std::make_shared<Beat>());
    }
    last_lag_.assign(shards_.size(), 0.0);
    reported_stall_.assign(shards_.size(), false);
    uv_timer_init(loop_, &timer_);
    timer_.data = this;
    started_ = true;
    auto p = static_cast<std::uint64_t>(period_.count());
    uv_timer_start(&timer_, on_timer, p, p);
    LogLine(Level::info, "watchdog")
        .kv("timeout_ms",
            static_cast<std::uint64_t>(
                std::chrono::duration_cast<std::chrono::milliseconds>(timeout_).count()))
        .kv("period_ms", static_cast<std::uint64_t>(period_.count()));
    tick();  // the first round starts now
}

void Watchdog::close() {
    if (started_) {
        started_ = false;
        uv_timer_stop(&timer_);
        uv_close(reinterpret_cast<uv_handle_t*>(&timer_), nullptr);
    }
}

void Watchdog::on_timer(uv_timer_t* t) {
    static_cast<Watchdog*>(t->data)->tick();
}

void Watchdog::tick() {
    std::int64_t now = steady_ns();
    bool all = true;
    for (std::size_t i = 0; i < shards_.size(); ++i) {
        const Beat& b = *beats_[i];
        // A shard whose loop has ended (draining done) has nothing left to answer for.
        if (round_ == 0 || b.round.load(std::memory_order_acquire) >= round_ ||
            shards_[i]->finished()) {
            if (round_ != 0 && b.round.load(std::memory_order_acquire) >= round_) {
                last_lag_[i] =
                    static_cast<double>(b.answered_ns.load(std::memory_order_relaxed) -
                                        posted_ns_) /
                    1e9;
            }
            if (reported_stall_[i]) {
                reported_stall_[i] = false;
                LogLine(Level::info, "shard_stall").kv("shard", static_cast<std::uint64_t>(i))
                    .kv("state", "answering");
            }
            continue;
        }
        all = false;
        double waited = static_cast<double>(now - posted_ns_) / 1e9;
        last_lag_[i] = std::max(last_lag_[i], waited);
        if (!reported_stall_[i] &&
            now - posted_ns_ >
                kStallPeriods * std::chrono::duration_cast<std::chrono::nanoseconds>(period_)
                                    .count()) {
            reported_stall_[i] = true;
            // The watchdog stops pinging from here: systemd restarts us at its timeout.
            LogLine(Level::error, "shard_stall")
                .kv("shard", static_cast<std::uint64_t>(i))
                .kv("state", "not_answering")
                .kv("waited_ms", static_cast<std::uint64_t>(waited * 1000));
        }
    }
    if (!all) {
        return;
    }
    if (round_ != 0 && timeout_.count() > 0) {
        notify_.send("WATCHDOG=1\n");
        ++pings_;
    }
    ++round_;
    posted_ns_ = now;
    for (std::size_t i = 0; i < shards_.size(); ++i) {
        shards_[i]->post([beat = beats_[i], round = round_](Shard&) {
            beat->answered_ns.store(steady_ns(), std::memory_order_relaxed);
            beat->round.store(round, std::memory_order_release);
        });
    }
}

std::vector<double> Watchdog::loop_lag_seconds() const {
    std::vector<double> out = last_lag_;
    if (round_ == 0) {
        return out;
    }
    std::int64_t now = steady_ns();
    for (std::size_t i = 0; i < out.size() && i < beats_.size(); ++i) {
        if (beats_[i]->round.load(std::memory_order_acquire) < round_ && !shards_[i]->finished()) {
            out[i] = std::max(out[i], static_cast<double>(now - posted_ns_) / 1e9);
        }
    }
    return out;
}

}  // namespace sluice
