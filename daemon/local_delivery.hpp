#pragma once
// In-line delivery into `maildir:` routes for one shard: a message is answered 250 only
// once its file is durable. Commits are batched: everything committed during one loop
// iteration is written by one thread-pool job, and each maildir's new/ directory is
// fsync'd once per batch, not once per message (no fsync ever runs on the loop).
//
// Trust: messages come from the session, already decided; paths from the config.

#include <uv.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "daemon/metrics.hpp"
#include "storage/message.hpp"

namespace sluice {

class LocalDelivery {
  public:
    // Runs on the loop thread when the batch holding the message is done.
    using Done = std::function<void(storage::CommitStatus)>;

    LocalDelivery(uv_loop_t* loop, int shard, ShardMetrics* metrics)
        : loop_(loop), shard_(shard), metrics_(metrics) {}
    LocalDelivery(const LocalDelivery&) = delete;
    LocalDelivery& operator=(const LocalDelivery&) = delete;

    void submit(std::unique_ptr<storage::Message> msg, std::string session_id, Done done);
    // Starts a job for everything submitted since the last call (the loop's prepare phase).
    void flush();
    // Jobs on the thread pool (the shard's loop must not end before they are back).
    std::size_t in_flight() const { return in_flight_; }

  private:
    struct Item {
        std::unique_ptr<storage::Message> msg;
        std::string session_id;
        Done done;
        storage::CommitStatus status = storage::CommitStatus::ok;
        std::string error;
    };
    struct Batch;

    static void work(uv_work_t* req);
    static void after(uv_work_t* req, int status);

    uv_loop_t* loop_;
    int shard_;
    ShardMetrics* metrics_;
    std::vector<Item> open_;
    std::size_t in_flight_ = 0;
};

}  // namespace sluice
