#pragma once
// The one date formatter for message headers: RFC 5322 §3.3 date-time, always in UTC, in
// English whatever the locale (our Received: fields, a DSN's Date:, Arrival-Date: and
// friends, RFC 3464 §2.2.5 and §2.3.4).

#include <chrono>
#include <string>

namespace sluice {

// "Thu, 13 Feb 1969 23:32:54 +0000".
std::string rfc5322_date(std::chrono::system_clock::time_point t);

}  // namespace sluice
