#include "daemon/local_delivery.hpp"

#include <map>

#include "common/log.hpp"
#include "storage/maildir.hpp"

namespace sluice {

struct LocalDelivery::Batch {
    uv_work_t req{};
    LocalDelivery* owner = nullptr;
    std::vector<Item> items;
};

void LocalDelivery::submit(std::unique_ptr<storage::Message> msg, std::string session_id,
                           Done done) {
    open_.push_back(Item{
        std::move(msg), std::move(session_id), std::move(done), storage::CommitStatus::ok, {}});
}

void LocalDelivery::flush() {
    if (open_.empty()) {
        return;
    }
    auto* b = new Batch;
    b->req.data = b;
    b->owner = this;
    b->items.swap(open_);
    ++in_flight_;
    uv_queue_work(loop_, &b->req, work, after);
}

void LocalDelivery::work(uv_work_t* req) {
    auto* b = static_cast<Batch*>(req->data);
    // Which items wrote into which maildir, so one directory fsync covers them all.
    std::map<std::string, std::vector<Item*>> dirs;
    std::map<std::string, std::string> prepared;  // maildir -> error from ensure_maildir
    for (auto& item : b->items) {
        std::map<std::string, std::vector<const storage::Recipient*>> by_dir;
        for (const auto& rc : item.msg->recipients) {
            by_dir[rc.transport.path].push_back(&rc);
        }
        for (const auto& [dir, rcpts] : by_dir) {
            auto [it, fresh] = prepared.try_emplace(dir);
            if (fresh) {
                it->second = storage::ensure_maildir(dir);
            }
            if (!it->second.empty()) {
                item.status = storage::CommitStatus::io_error;
                item.error = it->second;
                break;
            }
            item.status = storage::write_maildir(dir, *item.msg, rcpts, item.error);
            if (item.status != storage::CommitStatus::ok) {
                break;
            }
            dirs[dir].push_back(&item);
        }
    }
    for (auto& [dir, items] : dirs) {
        std::string error;
        auto st = storage::sync_maildir(dir, error);
        if (st != storage::CommitStatus::ok) {
            for (auto* item : items) {
                item->status = st;
                item->error = error;
            }
        }
    }
}

void LocalDelivery::after(uv_work_t* req, int status) {
    std::unique_ptr<Batch> b(static_cast<Batch*>(req->data));
    LocalDelivery& self = *b->owner;
    --self.in_flight_;
    for (auto& item : b->items) {
        if (status == UV_ECANCELED) {
            item.status = storage::CommitStatus::io_error;
            item.error = "cancelled";
        }
        const auto& m = *item.msg;
        if (item.status == storage::CommitStatus::ok) {
            for (const auto& rc : m.recipients) {
                self.metrics_->deliveries[static_cast<int>(DeliveryResult::delivered)].add();
                LogLine(Level::info, "delivered", self.shard_, item.session_id)
                    .kv("id", m.id)
                    .kv("to", "<" + rc.address + ">")
                    .kv("deliver_to", rc.deliver_to)
                    .kv("transport", rc.transport.text);
            }
        } else {
            LogLine(Level::error, "commit_failed", self.shard_, item.session_id)
                .kv("id", m.id)
                .kv("error", item.error);
        }
        item.done(item.status);
    }
}

}  // namespace sluice
