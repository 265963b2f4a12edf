#pragma once
// One warn line per reason and period for events that come in floods (clients evicted from
// the stats endpoint or the control socket). The first event of a quiet period is logged at
// once; later ones are counted per reason and reported when the period ends, by a timer, one
// line per reason with the count and the latest event's identifying field: a burst's last
// events are never reported minutes later under another event's client and reason.

#include <uv.h>

#include <cstdint>
#include <map>
#include <string>
#include <string_view>

namespace sluice {

class FloodLog {
  public:
    // `event` is the log event, `who` the key naming the client ("client", "uid"), `count`
    // the key of the number of events a line reports.
    FloodLog(uv_loop_t* loop, std::string event, std::string who, std::string count,
             std::uint64_t period_ms = 10'000);
    FloodLog(const FloodLog&) = delete;
    FloodLog& operator=(const FloodLog&) = delete;
    ~FloodLog();  // the owner calls close() and runs the loop first

    void note(std::string_view reason, std::string_view who);
    // Reports what is pending and frees the timer (its close callback runs on the loop).
    void close();

  private:
    struct Pending {
        std::uint64_t count = 0;
        std::string who;
    };
    void log(std::string_view reason, const Pending& p);
    static void on_timer(uv_timer_t* t);

    uv_loop_t* loop_;
    std::string event_;
    std::string who_key_;
    std::string count_key_;
    std::uint64_t period_ms_;
    uv_timer_t* timer_ = nullptr;  // running: a period is open
    bool period_open_ = false;
    std::map<std::string, Pending, std::less<>> pending_;
};

}  // namespace sluice
