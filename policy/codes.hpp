#pragma once
// The decision codes: one row per code, its name (as in the log, `sluicectl explain` and
// the metric label sluice_relay_decisions_total{code}) and its meaning (as `sluicectl
// log-report` prints it). Every user reads this table: the policy, the stats, the logs and
// log-report; docs/decision-codes.md describes each code at length. Header-only and
// constexpr, so tools that do not link the policy library (log-report) read the same rows.

#include <array>
#include <cstddef>
#include <optional>
#include <string_view>

namespace sluice::policy {

enum class Code {
    L101,
    L102,
    L103,
    G106,
    G107,
    G108,
    G110,
    D109,
    D111,
    D112,
    D113,
    B120,
    C130,
    T140,
    R150,  // rate limit: connections (daemon/rates/limits.hpp, README "Rate limits")
    R151,  // rate limit: messages
    R152,  // rate limit: recipients
    R153,  // rate limit: errors
    A000,  // a plain accept: connection or MAIL passed every check
};

struct CodeRow {
    Code code;
    std::string_view name;
    std::string_view meaning;
};

inline constexpr std::array<CodeRow, 19> kCodes = {{
    {Code::L101, "L101", "local recipient"},
    {Code::L102, "L102", "local domain, to the catch-all"},
    {Code::L103, "L103", "local domain, unknown address"},
    {Code::G106, "G106", "relay granted: local sender (weak)"},
    {Code::G107, "G107", "relay granted: privileged network"},
    {Code::G108, "G108", "relay granted: authenticated"},
    {Code::G110, "G110", "relay granted: open relay mode (weak)"},
    {Code::D109, "D109", "relay denied: sender not local"},
    {Code::D111, "D111", "relay denied: no criterion met"},
    {Code::D112, "D112", "relay denied: relaying disabled"},
    {Code::D113, "D113", "denied: sender-specified routing"},
    {Code::B120, "B120", "denied: block list"},
    {Code::C130, "C130", "connection refused by the IP filter"},
    {Code::T140, "T140", "temporary failure (fail closed)"},
    {Code::R150, "R150", "rate limit: connections"},
    {Code::R151, "R151", "rate limit: messages"},
    {Code::R152, "R152", "rate limit: recipients"},
    {Code::R153, "R153", "rate limit: errors"},
    {Code::A000, "A000", "accepted: connection or MAIL passed every check"},
}};

// Row i describes the code whose value is i: code_name is an index, not a search.
constexpr bool codes_in_order() {
    for (std::size_t i = 0; i < kCodes.size(); ++i) {
        if (static_cast<std::size_t>(kCodes[i].code) != i) {
            return false;
        }
    }
    return true;
}
static_assert(codes_in_order(), "kCodes rows must follow the order of enum Code");

// "L101", ... as in the log, `explain` and the metric label.
constexpr std::string_view code_name(Code code) {
    auto i = static_cast<std::size_t>(code);
    return i < kCodes.size() ? kCodes[i].name : "unknown";
}

// The code called `name`, if there is one.
constexpr std::optional<Code> find_code(std::string_view name) {
    for (const auto& row : kCodes) {
        if (row.name == name) {
            return row.code;
        }
    }
    return std::nullopt;
}

// "local recipient", ...; "" for a name that is no code.
constexpr std::string_view code_meaning(std::string_view name) {
    auto code = find_code(name);
    return code ? kCodes[static_cast<std::size_t>(*code)].meaning : std::string_view();
}

}  // namespace sluice::policy
