// libFuzzer driver for the SASL decoder (daemon/sasl.hpp): strict base64 and the PLAIN and
// LOGIN exchanges. The input is lines split at '\n': the first is the AUTH command's
// arguments, the rest are the client's responses. Invariants: no input crashes it; base64
// decoding is canonical (what decodes encodes back to the same text, and any bytes survive
// encode then decode); an exchange ends in done or error, done carries a valid identity and
// a password within the limits, and an error carries a reply and a reason for the log.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "daemon/sasl.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    using namespace sluice::sasl;
    std::string_view input(reinterpret_cast<const char*>(data), size);

    // Base64, both ways, on the whole input.
    if (auto decoded = base64_decode(input)) {
        if (base64_encode(*decoded) != input) {
            std::abort();
        }
    }
    auto round = base64_decode(base64_encode(input));
    if (!round || *round != input) {
        std::abort();
    }

    // The exchange, line by line.
    SaslExchange ex;
    std::size_t nl = input.find('\n');
    std::string_view first = input.substr(0, nl);
    Step step = ex.start(first);
    std::size_t pos = nl == std::string_view::npos ? input.size() : nl + 1;
    int rounds = 0;
    while (step.kind == Step::Kind::challenge) {
        if (!ex.active() || ++rounds > 3) {  // PLAIN: one challenge, LOGIN: two
            std::abort();
        }
        if (pos >= input.size()) {
            return 0;  // the client has not answered yet
        }
        nl = input.find('\n', pos);
        std::string_view line = input.substr(pos, nl == std::string_view::npos ? nl : nl - pos);
        pos = nl == std::string_view::npos ? input.size() : nl + 1;
        step = ex.respond(line);
    }
    if (ex.active()) {
        std::abort();
    }
    if (step.kind == Step::Kind::done) {
        const Credentials& c = step.credentials;
        if (!valid_identity(c.user) || c.password.size() > limits::kMaxPassword ||
            c.password.find('\0') != std::string::npos ||
            (!c.authzid.empty() && c.authzid != c.user)) {
            std::abort();
        }
    } else if (step.reason.empty() || step.reply == sluice::Reply::ok) {
        std::abort();  // an error names its reply and says why for the log
    }
    return 0;
}
