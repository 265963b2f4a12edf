#pragma once
// JSON text output for the `--json` modes of the tools: string escaping only (readers of
// our JSON use a real parser; writers append to a std::string).

#include <string>
#include <string_view>

namespace sluice {

// Appends `s` as a JSON string (RFC 8259 §7). JSON text must be valid UTF-8: valid
// sequences pass through, any other byte becomes U+FFFD, control characters are escaped.
void append_json_string(std::string& out, std::string_view s);

}  // namespace sluice
