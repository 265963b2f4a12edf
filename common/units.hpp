#pragma once
// Durations and sizes as written in the config ("5m", "25MiB"). Every value takes a
// unit (docs/config.md). Pure functions, errors as values.

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace sluice {

using Millis = std::chrono::milliseconds;

// "250ms", "30s", "5m", "1h", "5d". Returns nullopt and sets `error` on bad input.
std::optional<Millis> parse_duration(std::string_view s, std::string& error);

// "512B", "64KiB", "25MiB", "1GiB", "10MB" (SI units are powers of 1000).
std::optional<std::uint64_t> parse_size(std::string_view s, std::string& error);

std::string format_duration(Millis d);
std::string format_size(std::uint64_t bytes);

}  // namespace sluice
