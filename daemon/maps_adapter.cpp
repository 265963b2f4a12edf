#include "daemon/maps_adapter.hpp"

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

  private:
    storage::MapReader reader_;
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
