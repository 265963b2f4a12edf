#include "daemon/maps_adapter.hpp"

#include <uv.h>

#include <functional>
#include <memory>
#include <vector>

#include "storage/map_check.hpp"
#include "storage/maps.hpp"

namespace sluice {
namespace {

class LmdbShardMaps final : public ShardMaps {
  public:
    LmdbShardMaps(const std::string& dir, int shard)
        : reader_(dir, storage::MapReader::Options{std::chrono::milliseconds(0), shard}) {}

    policy::Lookup find(policy::MapId map, std::string_view key) const override {
        return reader_.find(map, key);
    }
    policy::Lookup find_cidr(policy::MapId map, const IpAddr& ip) const override {
        return reader_.find_cidr(map, ip);
    }
    policy::Lookup::Status has_entries(policy::MapId map) const override {
        return reader_.has_entries(map);
    }
    void refresh() override { reader_.refresh(); }

    void refresh_then(Shard& shard, std::function<void()> then) override {
        if (then) {
            waiting_.push_back(std::move(then));
        }
        if (loading_) {
            again_ = true;  // files may have changed since that load's poll: poll again
            return;
        }
        start_round(shard);
    }

  private:
    struct LoadJob {
        uv_work_t req{};
        LmdbShardMaps* self = nullptr;
        Shard* shard = nullptr;
        std::shared_ptr<const Config> config;  // the shard's, for the open-relay lint
        storage::MapReader::PendingPtr pending;
    };

    void start_round(Shard& shard) {
        auto pending = reader_.poll();
        if (!pending) {
            run_waiting();
            return;
        }
        auto* job = new LoadJob;
        job->req.data = job;
        job->self = this;
        job->shard = &shard;
        job->config = shard.snapshot()->config;
        job->pending = std::move(pending);
        loading_ = true;
        shard.work_started();
        uv_queue_work(
            shard.loop(), &job->req,
            [](uv_work_t* r) {
                auto* j = static_cast<LoadJob*>(r->data);
                storage::MapReader::load(*j->pending);
                vet(*j->config, *j->pending);
            },
            [](uv_work_t* r, int) {
                std::unique_ptr<LoadJob> j(static_cast<LoadJob*>(r->data));
                LmdbShardMaps* self = j->self;
                self->reader_.install(std::move(j->pending));
                self->loading_ = false;
                if (self->again_) {
                    self->again_ = false;
                    self->start_round(*j->shard);
                } else {
                    self->run_waiting();
                }
                j->shard->work_finished();
            });
    }

    // A live edit (`sluicectl map add`, a file copied in) must not open what --check, a
    // reload and the start-up refuse, e.g. a privileged network of 0.0.0.0/0.
    static void vet(const Config& config, storage::MapReader::Pending& pending) {
        for (policy::MapId map : storage::MapReader::loaded(pending)) {
            if (!storage::map_is_linted(map)) {
                continue;
            }
            auto entries = storage::MapReader::loaded_entries(pending, map);
            if (!entries.ok()) {
                storage::MapReader::reject(pending, map, entries.error().message);
                continue;
            }
            auto errors = storage::lint_map_contents(config, map, *entries);
            if (!errors.empty()) {
                storage::MapReader::reject(pending, map, "refused by the open-relay check: " +
                                                             errors.front().str());
            }
        }
    }

    void run_waiting() {
        auto waiting = std::move(waiting_);
        waiting_.clear();
        for (auto& fn : waiting) {
            fn();
        }
    }

    storage::MapReader reader_;
    bool loading_ = false;
    bool again_ = false;
    std::vector<std::function<void()>> waiting_;  // run once the maps on disk are in view
};

}  // namespace

std::unique_ptr<ShardMaps> make_shard_maps(const Config& config, int shard) {
    return std::make_unique<LmdbShardMaps>(config.maps.dir, shard);
}

std::vector<Diagnostic> check_maps(const Config& config, const std::vector<Diagnostic>& already,
                                   bool starting) {
    return storage::check_maps(
        config, already,
        starting ? storage::UnreadableMap::warning : storage::UnreadableMap::error);
}

}  // namespace sluice
