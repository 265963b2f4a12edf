#include "common/reply.hpp"

#include <array>

namespace sluice {
namespace {

using R = Reply;

struct Row {
    Reply id;
    ReplySpec spec;
};

// clang-format off
constexpr Row rows[] = {
    {R::greeting,                {220, "",      "% ESMTP Sluice", false}},
    {R::closing,                 {221, "2.0.0", "Bye", true}},
    {R::shutting_down,           {421, "4.3.2", "Service shutting down, try again later", true}},
    {R::too_many_connections,    {421, "4.7.0", "Too many connections, try again later", true}},
    {R::too_many_connections_from_ip,
                                 {421, "4.7.0", "Too many connections from your address", true}},
    {R::timeout,                 {421, "4.4.2", "Timeout exceeded, closing connection", true}},
    {R::too_many_errors,         {421, "4.7.0", "Too many errors, closing connection", true}},
    {R::too_many_junk_commands,  {421, "4.7.0", "Too many commands without a transaction, closing connection", true}},
    {R::early_talker,            {554, "5.5.0", "Protocol error: data sent before greeting", true}},
    {R::pipelining_not_advertised,
                                 {554, "5.5.0", "Protocol error: pipelining not allowed here", true}},
    {R::connection_refused,      {554, "5.7.1", "Connection refused", true}},
    {R::lookup_failed_connect,   {421, "4.3.0", "Temporary lookup failure, try again later", true}},
    {R::bare_line_ending,        {521, "5.5.2", "Bare CR or LF received, closing connection", true}},
    {R::rate_connections,        {421, "4.7.0", "Too many connections from %, try again later", true}},
    {R::rate_errors,             {421, "4.7.0", "Too many errors from %, closing connection", true}},
    {R::ehlo,                    {250, "",      "%", false}},
    {R::helo,                    {250, "",      "%", false}},
    {R::ok,                      {250, "2.0.0", "Ok", false}},
    {R::sender_ok,               {250, "2.1.0", "Sender ok", false}},
    {R::recipient_ok,            {250, "2.1.5", "Recipient ok", false}},
    {R::start_data,              {354, "",      "End data with <CR><LF>.<CR><LF>", false}},
    {R::queued,                  {250, "2.0.0", "Ok: queued as %", false}},
    {R::inline_refused,          {554, "5.0.0", "Refused by the next hop: %", false}},
    {R::inline_deferred,         {451, "4.4.0", "Not taken by the next hop, try again later: %", false}},
    {R::vrfy,                    {252, "2.5.0", "Cannot VRFY user, but will accept message", false}},
    {R::help,                    {214, "2.0.0", "Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP", false}},
    {R::line_too_long,           {500, "5.5.2", "Line too long", false}},
    {R::invalid_character,       {500, "5.5.2", "Invalid character in command", false}},
    {R::command_unrecognized,    {500, "5.5.1", "Command unrecognized", false}},
    {R::not_implemented,         {502, "5.5.1", "Command not implemented", false}},
    {R::syntax_helo,             {501, "5.5.4", "Syntax: % hostname", false}},
    {R::syntax_params,           {501, "5.5.4", "Syntax error in parameters", false}},
    {R::syntax_mail,             {501, "5.5.4", "Syntax: MAIL FROM:<address>", false}},
    {R::syntax_rcpt,             {501, "5.5.4", "Syntax: RCPT TO:<address>", false}},
    {R::bad_sender,              {501, "5.1.7", "Bad sender address syntax", false}},
    {R::bad_recipient,           {501, "5.1.3", "Bad recipient address syntax", false}},
    {R::sender_too_long,         {501, "5.1.7", "Sender address too long", false}},
    {R::recipient_too_long,      {501, "5.1.3", "Recipient address too long", false}},
    {R::needs_smtputf8,          {553, "5.6.7", "Non-ASCII address requires SMTPUTF8", false}},
    {R::need_helo,               {503, "5.5.1", "Send EHLO or HELO first", false}},
    {R::need_mail,               {503, "5.5.1", "Send MAIL first", false}},
    {R::need_rcpt,               {503, "5.5.1", "Send RCPT first", false}},
    {R::nested_mail,             {503, "5.5.1", "Sender already given", false}},
    {R::unknown_parameter,       {555, "5.5.4", "Parameter not recognized: %", false}},
    {R::unsupported_body,        {504, "5.5.4", "Unsupported BODY type", false}},
    {R::size_exceeded,           {552, "5.3.4", "Message size exceeds fixed limit", false}},
    {R::too_many_recipients,     {452, "4.5.3", "Too many recipients", false}},
    {R::no_valid_recipients,     {554, "5.5.1", "No valid recipients", false}},
    {R::too_many_hops,           {554, "5.4.0", "Too many hops, mail loop suspected", false}},
    {R::nul_in_message,          {554, "5.6.0", "Message contains NUL characters", false}},
    {R::local_error,             {451, "4.3.0", "Local error in processing, try again later", false}},
    {R::insufficient_storage,    {452, "4.3.1", "Insufficient system storage, try again later", false}},
    {R::recipient_local,         {250, "2.1.5", "Recipient ok", false}},
    {R::unknown_user,            {550, "5.1.1", "Recipient address rejected: user unknown", false}},
    {R::relay_granted,           {250, "2.1.5", "Recipient ok", false}},
    {R::relay_denied,            {554, "5.7.1", "Relay access denied", false}},
    {R::routing_denied,          {554, "5.7.1", "Sender-specified routing denied", false}},
    {R::routing_syntax,          {501, "5.1.3", "Sender-specified routing not accepted", false}},
    {R::blocked,                 {554, "5.7.1", "Access denied", false}},
    {R::deferred,                {450, "4.7.1", "Try again later", false}},
    {R::lookup_failed,           {451, "4.3.0", "Temporary lookup failure, try again later", false}},
    {R::rate_messages,           {450, "4.7.1", "Too many messages from %, try again later", false}},
    {R::rate_recipients,         {450, "4.7.1", "Too many recipients from %, try again later", false}},
    {R::starttls_ready,          {220, "2.0.0", "Ready to start TLS", false}},
    {R::tls_required,            {530, "5.7.0", "Must issue a STARTTLS command first", false}},
    {R::tls_unavailable,         {454, "4.7.0", "TLS not available", false}},
    {R::auth_ok,                 {235, "2.7.0", "Authentication successful", false}},
    {R::auth_failed,             {535, "5.7.8", "Authentication credentials invalid", false}},
    {R::auth_needs_tls,          {538, "5.7.11", "Encryption required for requested authentication mechanism", false}},
    {R::auth_throttled,          {454, "4.7.0", "Too many failed authentications, try again later", true}},
    {R::auth_bad_base64,         {501, "5.5.2", "Cannot decode response", false}},
    {R::auth_cancelled,          {501, "5.0.0", "Authentication cancelled", false}},
    {R::auth_challenge,          {334, "",      "%", false}},
    {R::auth_mechanism,          {504, "5.5.4", "Unrecognized authentication type", false}},
    {R::tls_already_active,      {503, "5.5.1", "TLS already active", false}},
    {R::auth_in_transaction,     {503, "5.5.1", "Already authenticated or in a transaction", false}},
    {R::auth_unavailable,        {454, "4.7.0", "Temporary authentication failure", false}},
    {R::sender_not_owned,        {553, "5.7.1", "Sender address not owned by authenticated user", false}},
    {R::next_hop_lost,           {451, "4.4.2", "Lost connection with the next hop", false}},
    {R::next_hop_timeout,        {451, "4.4.2", "Timed out waiting for the next hop", false}},
    {R::next_hop_protocol,       {451, "4.5.0", "Protocol error from the next hop", false}},
    {R::conversion_required,     {554, "5.6.3", "Conversion required: the next hop does not offer 8BITMIME", false}},
    {R::dns_null_mx,             {556, "5.1.10", "Recipient domain accepts no mail (null MX): %", false}},
    {R::dns_no_domain,           {550, "5.1.2", "Recipient domain not found: %", false}},
    {R::dns_mx_loop,             {554, "5.4.6", "Mail for % loops back to myself", false}},
    {R::dns_temporary,           {451, "4.4.3", "DNS lookup failed for %, try again later", false}},
    {R::mx_unreachable,          {451, "4.4.1", "No MX host of % answered, try again later", false}},
};
// clang-format on

constexpr auto table = [] {
    std::array<ReplySpec, static_cast<std::size_t>(Reply::count_)> t{};
    for (const auto& row : rows) {
        t[static_cast<std::size_t>(row.id)] = row.spec;
    }
    return t;
}();

static_assert(std::size(rows) == static_cast<std::size_t>(Reply::count_),
              "every Reply has exactly one row");
constexpr bool table_complete() {
    for (const auto& s : table) {
        if (s.code == 0) {
            return false;
        }
    }
    return true;
}
static_assert(table_complete(), "a Reply is missing from the table");

void append_clean(std::string& out, std::string_view s) {
    for (char c : s) {
        if (c != '\r' && c != '\n' && c != '\0') {
            out.push_back(c);
        }
    }
}

void append_body(std::string& out, const ReplySpec& spec, std::string_view arg,
                 std::string_view text) {
    out += std::to_string(spec.code);
    out.push_back(' ');
    if (!spec.enhanced.empty()) {
        out += spec.enhanced;
        out.push_back(' ');
    }
    if (!text.empty()) {
        append_clean(out, text);
        return;
    }
    for (char c : spec.text) {
        if (c == '%') {
            append_clean(out, arg);
        } else {
            out.push_back(c);
        }
    }
}

}  // namespace

const ReplySpec& reply_spec(Reply r) {
    return table[static_cast<std::size_t>(r)];
}

void append_reply(std::string& out, Reply r, std::string_view arg, std::string_view text) {
    append_body(out, reply_spec(r), arg, text);
    out += "\r\n";
}

void append_multiline(std::string& out, Reply r, const std::vector<std::string>& lines) {
    const auto& spec = reply_spec(r);
    for (std::size_t i = 0; i < lines.size(); ++i) {
        out += std::to_string(spec.code);
        out.push_back(i + 1 == lines.size() ? ' ' : '-');
        append_clean(out, lines[i]);
        out += "\r\n";
    }
}

std::string reply_line(Reply r, std::string_view arg, std::string_view text) {
    std::string s;
    append_body(s, reply_spec(r), arg, text);
    return s;
}

}  // namespace sluice
