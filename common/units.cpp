#include "common/units.hpp"

#include <charconv>

namespace sluice {
namespace {

struct Split {
    std::uint64_t number;
    std::string_view unit;
};

std::optional<Split> split_number(std::string_view s, std::string& error) {
    std::uint64_t n = 0;
    auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), n);
    if (ec != std::errc() || end == s.data()) {
        error = "expected a number with a unit, got \"" + std::string(s) + "\"";
        return std::nullopt;
    }
    std::string_view unit(end, static_cast<std::size_t>(s.data() + s.size() - end));
    while (!unit.empty() && unit.front() == ' ') {
        unit.remove_prefix(1);
    }
    if (unit.empty()) {
        error = "missing unit in \"" + std::string(s) + "\"";
        return std::nullopt;
    }
    return Split{n, unit};
}

std::optional<std::uint64_t> scaled(std::uint64_t n, std::uint64_t factor, std::string_view s,
                                    std::string& error) {
    if (factor != 0 && n > UINT64_MAX / factor) {
        error = "value out of range: \"" + std::string(s) + "\"";
        return std::nullopt;
    }
    return n * factor;
}

}  // namespace

std::optional<Millis> parse_duration(std::string_view s, std::string& error) {
    auto sp = split_number(s, error);
    if (!sp) {
        return std::nullopt;
    }
    std::uint64_t factor = 0;
    if (sp->unit == "ms") {
        factor = 1;
    } else if (sp->unit == "s") {
        factor = 1000;
    } else if (sp->unit == "m") {
        factor = 60'000;
    } else if (sp->unit == "h") {
        factor = 3'600'000;
    } else if (sp->unit == "d") {
        factor = 86'400'000;
    } else {
        error = "unknown duration unit \"" + std::string(sp->unit) + "\" (use ms, s, m, h, d)";
        return std::nullopt;
    }
    auto v = scaled(sp->number, factor, s, error);
    if (!v || *v > static_cast<std::uint64_t>(INT64_MAX)) {
        if (v) {
            error = "value out of range: \"" + std::string(s) + "\"";
        }
        return std::nullopt;
    }
    return Millis(static_cast<std::int64_t>(*v));
}

std::optional<std::uint64_t> parse_size(std::string_view s, std::string& error) {
    auto sp = split_number(s, error);
    if (!sp) {
        return std::nullopt;
    }
    struct Unit {
        std::string_view name;
        std::uint64_t factor;
    };
    static constexpr Unit units[] = {
        {"B", 1},
        {"KiB", 1ull << 10},
        {"MiB", 1ull << 20},
        {"GiB", 1ull << 30},
        {"TiB", 1ull << 40},
        {"KB", 1000},
        {"kB", 1000},
        {"MB", 1000'000},
        {"GB", 1000'000'000},
        {"TB", 1000'000'000'000},
    };
    for (const auto& u : units) {
        if (sp->unit == u.name) {
            return scaled(sp->number, u.factor, s, error);
        }
    }
    error =
        "unknown size unit \"" + std::string(sp->unit) + "\" (use B, KiB, MiB, GiB, KB, MB, GB)";
    return std::nullopt;
}

std::string format_duration(Millis d) {
    auto ms = d.count();
    if (ms % 86'400'000 == 0 && ms != 0) {
        return std::to_string(ms / 86'400'000) + "d";
    }
    if (ms % 3'600'000 == 0 && ms != 0) {
        return std::to_string(ms / 3'600'000) + "h";
    }
    if (ms % 60'000 == 0 && ms != 0) {
        return std::to_string(ms / 60'000) + "m";
    }
    if (ms % 1000 == 0) {
        return std::to_string(ms / 1000) + "s";
    }
    return std::to_string(ms) + "ms";
}

std::string format_size(std::uint64_t b) {
    if (b != 0 && b % (1ull << 30) == 0) {
        return std::to_string(b >> 30) + "GiB";
    }
    if (b != 0 && b % (1ull << 20) == 0) {
        return std::to_string(b >> 20) + "MiB";
    }
    if (b != 0 && b % (1ull << 10) == 0) {
        return std::to_string(b >> 10) + "KiB";
    }
    return std::to_string(b) + "B";
}

}  // namespace sluice
