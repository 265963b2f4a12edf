#include "daemon/flood_log.hpp"

#include "common/log.hpp"

namespace sluice {

FloodLog::FloodLog(uv_loop_t* loop, std::string event, std::string who, std::string count,
                   std::uint64_t period_ms)
    : loop_(loop),
      event_(std::move(event)),
      who_key_(std::move(who)),
      count_key_(std::move(count)),
      period_ms_(period_ms) {}

FloodLog::~FloodLog() = default;

void FloodLog::log(std::string_view reason, const Pending& p) {
    LogLine line(Level::warn, event_);
    line.kv(who_key_, p.who).kv("reason", reason).kv(count_key_, p.count);
}

void FloodLog::note(std::string_view reason, std::string_view who) {
    if (!period_open_) {
        log(reason, Pending{1, std::string(who)});
        if (timer_ == nullptr) {
            timer_ = new uv_timer_t;
            uv_timer_init(loop_, timer_);
            timer_->data = this;
        }
        period_open_ = true;
        uv_timer_start(timer_, on_timer, period_ms_, 0);
        return;
    }
    auto it = pending_.find(reason);
    if (it == pending_.end()) {
        it = pending_.emplace(std::string(reason), Pending{}).first;
    }
    ++it->second.count;
    it->second.who = std::string(who);
}

void FloodLog::on_timer(uv_timer_t* t) {
    auto* self = static_cast<FloodLog*>(t->data);
    self->period_open_ = false;
    if (self->pending_.empty()) {
        return;  // a quiet period: the next event is logged at once
    }
    for (const auto& [reason, p] : self->pending_) {
        self->log(reason, p);
    }
    self->pending_.clear();
    self->period_open_ = true;
    uv_timer_start(t, on_timer, self->period_ms_, 0);
}

void FloodLog::close() {
    for (const auto& [reason, p] : pending_) {
        log(reason, p);
    }
    pending_.clear();
    period_open_ = false;
    if (timer_ != nullptr) {
        uv_close(reinterpret_cast<uv_handle_t*>(timer_),
                 [](uv_handle_t* h) { delete reinterpret_cast<uv_timer_t*>(h); });
        timer_ = nullptr;
    }
}

}  // namespace sluice
