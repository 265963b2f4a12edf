#include "daemon/control.hpp"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <toml++/toml.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <set>
#include <sstream>

#include "common/fd.hpp"
#include "common/log.hpp"
#include "policy/address.hpp"
#include "policy/policy.hpp"
#include "storage/maps.hpp"

namespace sluice::control {

using nlohmann::json;

// ---- LineReader -------------------------------------------------------------------

void LineReader::feed(std::string_view bytes) {
    if (overflow_) {
        return;
    }
    compact();
    buf_.append(bytes);
    // An unterminated tail longer than the limit can never become a valid line.
    std::size_t last_lf = buf_.rfind('\n');
    std::size_t tail =
        last_lf == std::string::npos ? buf_.size() - start_ : buf_.size() - last_lf - 1;
    if (tail > max_ + 1) {  // + 1: the CR of a CRLF may arrive before its LF
        overflow_ = true;
    }
}

std::optional<std::string> LineReader::next() {
    if (overflow_) {
        return std::nullopt;
    }
    std::size_t lf = buf_.find('\n', start_);
    if (lf == std::string::npos) {
        return std::nullopt;
    }
    std::string_view line(buf_.data() + start_, lf - start_);
    if (!line.empty() && line.back() == '\r') {
        line.remove_suffix(1);
    }
    if (line.size() > max_) {
        overflow_ = true;
        return std::nullopt;
    }
    std::string out(line);
    start_ = lf + 1;
    return out;
}

std::optional<std::string> LineReader::take_rest() {
    if (overflow_ || start_ >= buf_.size()) {
        return std::nullopt;
    }
    std::string rest = buf_.substr(start_);
    start_ = buf_.size();
    if (!rest.empty() && rest.back() == '\r') {
        rest.pop_back();
    }
    return rest;
}

void LineReader::compact() {
    if (start_ > 0) {
        buf_.erase(0, start_);
        start_ = 0;
    }
}

// ---- requests -----------------------------------------------------------------------

std::string_view command_name(Command c) {
    switch (c) {
        case Command::status:
            return "status";
        case Command::stats:
            return "stats";
        case Command::reload:
            return "reload";
        case Command::explain:
            return "explain";
        case Command::queue:
            return "queue";
        case Command::dns:
            return "dns";
        case Command::rates:
            return "rates";
    }
    return "unknown";
}

json dns_report(const std::string& domain, const std::string& route, const dns::Destination& d) {
    json j;
    j["ok"] = true;
    j["domain"] = domain;
    j["route"] = route;
    j["verdict"] = std::string(dns::to_string(d.verdict));
    if (d.verdict != dns::Destination::Verdict::deliver) {
        j["reply"] = reply_line(d.reply, d.detail);
    }
    j["implicit_mx"] = d.implicit;
    j["null_mx"] = d.null_mx;
    j["mx_ttl"] = d.mx_ttl;
    j["plan_ttl"] = d.ttl;
    json hosts = json::array();
    for (const auto& h : d.hosts) {
        json addrs = json::array();
        for (const auto& [ip, ttl] : h.addrs) {
            addrs.push_back({{"address", format_ip(ip)}, {"ttl", ttl}});
        }
        hosts.push_back({{"host", h.name},
                         {"preference", h.preference},
                         {"canonical", h.canonical},
                         {"status", h.status},
                         {"addresses", addrs}});
    }
    j["hosts"] = hosts;
    json targets = json::array();
    for (const auto& t : d.targets) {
        targets.push_back(t.host + "[" + format_ip(t.addr) + "]:25");
    }
    j["try"] = targets;
    return j;
}

ParsedRequest parse_request(std::string_view line) {
    ParsedRequest r;
    json body = json::parse(line.begin(), line.end(), nullptr, /*allow_exceptions=*/false);
    if (body.is_discarded()) {
        r.error = "invalid JSON";
        return r;
    }
    if (!body.is_object()) {
        r.error = "a request must be a JSON object";
        return r;
    }
    auto it = body.find("cmd");
    if (it == body.end() || !it->is_string()) {
        r.error = "a request needs \"cmd\" (a string)";
        return r;
    }
    const auto& name = it->get_ref<const std::string&>();
    for (Command c :
         {Command::status, Command::stats, Command::reload, Command::explain, Command::queue,
          Command::dns, Command::rates}) {
        if (name == command_name(c)) {
            r.request = Request{c, std::move(body)};
            return r;
        }
    }
    r.error = "unknown command \"" + name.substr(0, 64) + "\"";
    return r;
}

std::optional<ExplainArgs> parse_explain_args(const json& body, std::string& error) {
    ExplainArgs a;
    struct Field {
        const char* name;
        std::string* into;
        bool required;
    };
    const Field fields[] = {
        {"client", &a.client, true}, {"from", &a.from, true},  {"to", &a.to, true},
        {"helo", &a.helo, false},    {"auth", &a.auth, false}, {"listener", &a.listener, false},
    };
    for (const auto& f : fields) {
        auto it = body.find(f.name);
        if (it == body.end() || it->is_null()) {
            if (f.required) {
                error = std::string("explain needs \"") + f.name + "\"";
                return std::nullopt;
            }
            continue;
        }
        if (!it->is_string()) {
            error = std::string("explain: \"") + f.name + "\" must be a string";
            return std::nullopt;
        }
        *f.into = it->get<std::string>();
    }
    if (auto it = body.find("tls"); it != body.end() && !it->is_null()) {
        if (!it->is_boolean()) {
            error = "explain: \"tls\" must be true or false";
            return std::nullopt;
        }
        a.tls = it->get<bool>();
    }
    return a;
}

json error_reply(std::string_view message) {
    return json{{"ok", false}, {"error", std::string(message)}};
}

std::string encode(const json& reply) {
    return reply.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
}

// ---- explain / status ---------------------------------------------------------------

namespace {

// The peer's primary group or one of its supplementary groups (SO_PEERGROUPS, Linux
// 4.13: the groups the peer had when it connected) is `gid`.
bool peer_in_group(int fd, const ucred& cred, gid_t gid) {
    if (cred.gid == gid) {
        return true;
    }
    std::vector<gid_t> groups(64);
    socklen_t len = static_cast<socklen_t>(groups.size() * sizeof(gid_t));
    if (::getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups.data(), &len) != 0) {
        if (errno != ERANGE) {
            return false;
        }
        groups.resize(len / sizeof(gid_t) + 1);
        len = static_cast<socklen_t>(groups.size() * sizeof(gid_t));
        if (::getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups.data(), &len) != 0) {
            return false;
        }
    }
    groups.resize(len / sizeof(gid_t));
    return std::find(groups.begin(), groups.end(), gid) != groups.end();
}

std::string bracketed(const std::string& a) {
    return !a.empty() && a.front() == '<' ? a : "<" + a + ">";
}

}  // namespace

json explain(const Snapshot& snapshot, const policy::Maps& maps, const ExplainArgs& a) {
    const Config& cfg = *snapshot.config;
    const ListenerConfig* listener = nullptr;
    for (const auto& l : cfg.listeners) {
        if (a.listener.empty() || l.name == a.listener) {
            listener = &l;
            break;
        }
    }
    if (listener == nullptr) {
        std::string names;
        for (const auto& l : cfg.listeners) {
            names += (names.empty() ? "" : ", ") + l.name;
        }
        return error_reply("no listener named \"" + a.listener + "\" (listeners: " + names + ")");
    }
    auto ip = parse_ip(a.client);
    if (!ip) {
        return error_reply("client \"" + a.client + "\" is not an IP address");
    }
    if (!a.auth.empty() && listener->role == Role::mx) {
        // An mx listener offers no AUTH (docs/config.md, listener.role); no session there is
        // authenticated.
        return error_reply("listener " + listener->name +
                           " has role mx, which offers no AUTH: --auth cannot apply there");
    }
    std::string from_text = bracketed(a.from);
    std::string to_text = bracketed(a.to);
    auto from = policy::parse_path(from_text, true, true);
    if (!from.ok() || from.consumed != from_text.size()) {
        return error_reply(
            "sender " + from_text + ": " +
            std::string(from.ok() ? "trailing text" : policy::path_error_name(from.error)) +
            " (a session answers " + reply_line(policy::path_error_reply(from.error, true)) + ")");
    }
    auto to = policy::parse_path(to_text, false, true);
    if (!to.ok() || to.consumed != to_text.size()) {
        return error_reply(
            "recipient " + to_text + ": " +
            std::string(to.ok() ? "trailing text" : policy::path_error_name(to.error)) +
            " (a session answers " + reply_line(policy::path_error_reply(to.error, false)) + ")");
    }
    policy::Facts facts;
    facts.listener = listener->name;
    facts.role = listener->role;
    facts.client = *ip;
    facts.helo = a.helo;
    // Without --tls: TLS is assumed where the listener makes it a precondition of MAIL.
    facts.tls =
        a.tls.value_or(listener->tls == TlsMode::implicit || listener->tls == TlsMode::required);
    facts.auth_user = a.auth;
    auto d = policy::decide_envelope(facts, from.address, to.address, snapshot.rules, maps);
    json j;
    j["ok"] = true;
    j["generation"] = snapshot.generation;
    j["listener"] = listener->name;
    j["role"] = std::string(to_string(listener->role));
    j["client"] = format_ip(*ip);
    if (!listener->proxy_protocol.empty()) {
        // Behind a load balancer the client is the address its PROXY header names, the one
        // --client stands for; the balancers themselves connect to this listener.
        auto& balancers = j["proxy_protocol"] = json::array();
        for (const auto& c : listener->proxy_protocol) {
            balancers.push_back(format_cidr(c));
        }
    }
    j["tls"] = facts.tls;
    j["auth"] = a.auth;
    j["helo"] = a.helo;
    j["from"] = "<" + from.address.str() + ">";
    j["to"] = "<" + to.address.str() + ">";
    j["code"] = std::string(policy::code_name(d.code));
    j["verdict"] = std::string(policy::verdict_name(d.verdict));
    j["reply"] = d.reply_line();
    j["rule"] = d.rule;
    j["source"] = d.source;
    j["reason"] = d.reason;
    if (!d.deliver_to.empty()) {
        j["deliver_to"] = d.deliver_to;
    }
    return j;
}

json status(const Config& config, const StatusInfo& info) {
    json j;
    j["ok"] = true;
    j["version"] = info.version;
    j["uptime_seconds"] = info.uptime_seconds;
    j["shards"] = info.shards;
    j["generation"] = info.generation;
    j["shard_generations"] = info.shard_generations;
    j["config"] = config.path;
    json listeners = json::array();
    for (const auto& l : config.listeners) {
        listeners.push_back({{"name", l.name},
                             {"address", format_sockaddr(l.address)},
                             {"role", std::string(to_string(l.role))},
                             {"tls", std::string(to_string(l.tls))}});
    }
    j["listeners"] = listeners;
    j["sessions_active"] = info.sessions_active;
    j["queue_messages"] = info.queue_messages;
    if (!info.spool_state.empty()) {
        j["spool"] = {{"state", info.spool_state},
                      {"free_bytes", info.spool_free_bytes},
                      {"reserve_bytes", info.spool_reserve_bytes}};
    }
    j["draining"] = info.draining;
    j["reload_in_progress"] = info.reload_in_progress;
    j["stats_address"] = info.stats_address;
    j["control_socket"] = config.control.socket;
    return j;
}

// ---- reload reports ---------------------------------------------------------------

namespace {

std::string key_segment(std::string_view k) {
    bool bare = !k.empty() && std::all_of(k.begin(), k.end(), [](char c) {
        return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-';
    });
    if (bare) {
        return std::string(k);
    }
    std::string out = "\"";
    for (char c : k) {
        if (c == '"' || c == '\\') {
            out.push_back('\\');
        }
        out.push_back(c);
    }
    return out + "\"";
}

std::string node_text(const toml::node& n) {
    std::ostringstream os;
    n.visit([&os](const auto& v) { os << v; });
    return os.str();
}

void flatten(const toml::table& t, const std::string& prefix, FlatConfig& out) {
    for (const auto& [key, node] : t) {
        std::string name = prefix + key_segment(key.str());
        if (const auto* sub = node.as_table()) {
            flatten(*sub, name + ".", out);
        } else if (const auto* arr = node.as_array(); arr && arr->is_array_of_tables()) {
            for (std::size_t i = 0; i < arr->size(); ++i) {
                const auto* tbl = arr->get(i)->as_table();
                std::string id = std::to_string(i);
                if (const auto* nm = tbl->get_as<std::string>("name")) {
                    id = nm->get();
                }
                flatten(*tbl, name + "." + key_segment(id) + ".", out);
            }
        } else {
            out[name] = node_text(node);
        }
    }
}

std::string listener_fields(const ListenerConfig& l) {
    std::string s = l.name + "|" + std::string(to_string(l.role)) + "|" +
                    std::string(to_string(l.tls)) + "|" + (l.auth_without_tls ? "1" : "0") +
                    (l.sender_login_match ? "1" : "0");
    for (const auto& c : l.proxy_protocol) {
        s += "|" + format_cidr(c);
    }
    return s;
}

}  // namespace

FlatConfig flatten_config(std::string_view toml_text, const std::string& path) {
    FlatConfig out;
    try {
        auto tbl = toml::parse(toml_text, path);
        flatten(tbl, "", out);
    } catch (const toml::parse_error&) {
        out.clear();
    }
    return out;
}

std::vector<std::string> changed_keys(const FlatConfig& before, const FlatConfig& after) {
    std::set<std::string> keys;
    for (const auto& [k, v] : before) {
        keys.insert(k);
    }
    for (const auto& [k, v] : after) {
        keys.insert(k);
    }
    std::vector<std::string> out;
    for (const auto& k : keys) {
        if (k.rfind("listener.", 0) == 0) {
            continue;
        }
        auto b = before.find(k);
        auto a = after.find(k);
        if (b == before.end() || a == after.end() || b->second != a->second) {
            out.push_back(k);
        }
    }
    return out;
}

ListenerPlan plan_listeners(const Config& before, const Config& after) {
    ListenerPlan p;
    std::map<std::string, std::size_t> old_by_address;
    for (std::size_t i = 0; i < before.listeners.size(); ++i) {
        old_by_address[format_sockaddr(before.listeners[i].address)] = i;
    }
    std::set<std::size_t> kept;
    for (std::size_t j = 0; j < after.listeners.size(); ++j) {
        auto it = old_by_address.find(format_sockaddr(after.listeners[j].address));
        if (it == old_by_address.end()) {
            p.added.push_back(j);
            continue;
        }
        kept.insert(it->second);
        if (listener_fields(before.listeners[it->second]) != listener_fields(after.listeners[j])) {
            p.changed.push_back(j);
        }
    }
    for (std::size_t i = 0; i < before.listeners.size(); ++i) {
        if (kept.count(i) == 0) {
            p.removed.push_back(i);
        }
    }
    return p;
}

std::vector<std::string> restart_only_changes(const Config& before, const Config& after) {
    std::vector<std::string> out;
    auto where = [&](const char* key) {
        auto it = after.sources.find(key);
        return it == after.sources.end() ? after.path
                                         : it->second.file + ":" + std::to_string(it->second.line) +
                                               ":" + std::to_string(it->second.column);
    };
    if (before.server.shards != after.server.shards) {
        out.push_back(
            where("server.shards") + ": server.shards changes from " +
            std::to_string(before.server.shards) + " to " + std::to_string(after.server.shards) +
            ": the number of shards cannot change while running; restart sluiced to apply");
    }
    if (before.maps.dir != after.maps.dir) {
        out.push_back(where("maps.dir") + ": maps.dir changes from " + before.maps.dir + " to " +
                      after.maps.dir + ": sessions read the open maps; restart sluiced to apply");
    }
    if (before.control.socket != after.control.socket) {
        out.push_back(where("control.socket") + ": control.socket changes from " +
                      before.control.socket + " to " + after.control.socket +
                      ": restart sluiced to apply");
    }
    if (after.listeners.size() > kMaxListeners) {
        out.push_back(after.path + ": more than " + std::to_string(kMaxListeners) + " listeners");
    }
    return out;
}

MapStamps stamp_maps(const std::string& maps_dir) {
    MapStamps out;
    for (std::size_t i = 0; i < static_cast<std::size_t>(policy::MapId::count_); ++i) {
        auto id = static_cast<policy::MapId>(i);
        struct stat st {};
        if (::stat(storage::map_path(maps_dir, id).c_str(), &st) == 0) {
            out[std::string(policy::map_name(id))] =
                std::to_string(st.st_ino) + ":" + std::to_string(st.st_size) + ":" +
                std::to_string(st.st_mtim.tv_sec) + "." + std::to_string(st.st_mtim.tv_nsec);
        }
    }
    return out;
}

std::vector<std::string> changed_maps(const MapStamps& before, const MapStamps& after) {
    std::set<std::string> names;
    for (const auto& [k, v] : before) {
        names.insert(k);
    }
    for (const auto& [k, v] : after) {
        names.insert(k);
    }
    std::vector<std::string> out;
    for (const auto& n : names) {
        auto b = before.find(n);
        auto a = after.find(n);
        if (b == before.end() || a == after.end() || b->second != a->second) {
            out.push_back(n);
        }
    }
    return out;
}

// ---- ControlServer ------------------------------------------------------------------

struct ControlServer::Client {
    ControlServer* server = nullptr;
    std::uint64_t id = 0;
    uv_pipe_t pipe{};
    uv_timer_t timer{};
    LineReader reader;
    std::array<char, 16 * 1024> buf{};
    int handles = 2;  // pipe + timer
    std::uint32_t uid = 0;
    pid_t pid = 0;
    bool admitted = false;  // counted in admitted_ and per_uid_
    std::size_t writes_pending = 0;
    std::size_t bytes_pending = 0;
    bool busy = false;        // a request is with the handler
    bool processing = false;  // inside process(): a synchronous reply must not recurse
    bool reading = false;
    bool eof = false;          // the peer sent EOF (it may still read our replies)
    bool close_after = false;  // close once the pending writes are out
    bool closing = false;
};

namespace {

struct WriteReq {
    uv_write_t req{};
    std::string text;
};

}  // namespace

ControlServer::ControlServer(uv_loop_t* loop, Handler handler)
    : loop_(loop), handler_(std::move(handler)) {}

// Handles are freed by their close callbacks: the owner calls close() and runs the loop.
ControlServer::~ControlServer() = default;

std::string ControlServer::listen(const std::string& path) {
    sockaddr_un probe{};
    if (path.empty() || path.size() >= sizeof probe.sun_path) {
        // libuv 1.44 would truncate silently (unix(7)).
        return "control socket path \"" + path + "\" is empty or longer than " +
               std::to_string(sizeof probe.sun_path - 1) + " bytes";
    }
    struct stat st {};
    if (::lstat(path.c_str(), &st) == 0) {
        if (!S_ISSOCK(st.st_mode)) {
            return path + " exists and is not a socket";
        }
        // A socket file: stale after a crash, or a live daemon's. Only a stale one goes.
        Fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
        probe.sun_family = AF_UNIX;
        std::memcpy(probe.sun_path, path.data(), path.size());
        if (fd.valid() &&
            ::connect(fd.get(), reinterpret_cast<sockaddr*>(&probe), sizeof probe) == 0) {
            return "another process answers on " + path;
        }
        if (errno != ECONNREFUSED && errno != ENOENT) {
            return "cannot check " + path + ": " + std::strerror(errno);
        }
        ::unlink(path.c_str());
    }
    auto* p = new uv_pipe_t;
    uv_pipe_init(loop_, p, 0);
    p->data = this;
    auto drop = [](uv_pipe_t* h) {
        uv_close(reinterpret_cast<uv_handle_t*>(h),
                 [](uv_handle_t* x) { delete reinterpret_cast<uv_pipe_t*>(x); });
    };
    int rc = uv_pipe_bind(p, path.c_str());
    if (rc != 0) {
        drop(p);
        return "cannot bind " + path + ": " + uv_strerror(rc);
    }
    // bind(2) made the file with the umask's mode; listen(2) has not run yet, so nobody
    // can connect before the mode is right.
    if (::chmod(path.c_str(), 0660) != 0 || ::lstat(path.c_str(), &st) != 0) {
        std::string e = std::strerror(errno);
        drop(p);
        ::unlink(path.c_str());
        return "cannot chmod " + path + ": " + e;
    }
    rc = uv_listen(reinterpret_cast<uv_stream_t*>(p), limits::backlog, on_connection);
    if (rc != 0) {
        drop(p);
        ::unlink(path.c_str());
        return "cannot listen on " + path + ": " + uv_strerror(rc);
    }
    if (pipe_ != nullptr) {
        drop(pipe_);
    }
    pipe_ = p;
    path_ = path;
    socket_inode_ = st.st_ino;
    return {};
}

void ControlServer::close() {
    evict_log_.close();
    if (pipe_ != nullptr) {
        uv_close(reinterpret_cast<uv_handle_t*>(pipe_),
                 [](uv_handle_t* x) { delete reinterpret_cast<uv_pipe_t*>(x); });
        pipe_ = nullptr;
        // Remove the file only if it is still ours (a newer daemon may have replaced it).
        struct stat st {};
        if (::lstat(path_.c_str(), &st) == 0 && st.st_ino == socket_inode_) {
            ::unlink(path_.c_str());
        }
    }
    auto clients = clients_;
    for (auto& [id, c] : clients) {
        close_client(*c);
    }
    alive_.reset();
}

void ControlServer::on_connection(uv_stream_t* server, int status) {
    auto* self = static_cast<ControlServer*>(server->data);
    if (status < 0) {
        return;
    }
    auto* c = new Client;
    c->server = self;
    c->id = self->next_id_++;
    uv_pipe_init(self->loop_, &c->pipe, 0);
    uv_timer_init(self->loop_, &c->timer);
    c->pipe.data = c;
    c->timer.data = c;
    self->clients_[c->id] = c;
    if (uv_accept(server, reinterpret_cast<uv_stream_t*>(&c->pipe)) != 0) {
        self->close_client(*c);
        return;
    }
    // Who is on the other end: root, our own uid, or a member of our group (operators in
    // group sluice, README "Deploying on an edge host"). The file mode (0660) is the first
    // fence, this is the second: it holds even if the mode or the directory is loosened.
    uv_os_fd_t fd = -1;
    ucred cred{};
    socklen_t len = sizeof cred;
    bool known = uv_fileno(reinterpret_cast<uv_handle_t*>(&c->pipe), &fd) == 0 &&
                 ::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0;
    // Group 0 lets no one in by membership: a daemon serving as root keeps root-only.
    bool allowed = known && (cred.uid == 0 || cred.uid == ::geteuid() ||
                             (::getegid() != 0 && peer_in_group(fd, cred, ::getegid())));
    if (!allowed) {
        // A refused peer can reconnect in a loop: one line per 10 s at most, with the number
        // of refusals since the previous line (as for evictions).
        ++self->refused_;
        std::uint64_t now = uv_now(self->loop_);
        if (self->refused_logged_ == 0 || now - self->last_refused_log_ms_ >= 10'000) {
            LogLine(Level::warn, "control_refused")
                .kv("uid", known ? static_cast<std::int64_t>(cred.uid) : -1)
                .kv("pid", known ? static_cast<std::int64_t>(cred.pid) : -1)
                .kv("refused", self->refused_ - self->refused_logged_);
            self->refused_logged_ = self->refused_;
            self->last_refused_log_ms_ = now;
        }
        c->close_after = true;
        auto reply = error_reply("permission denied: uid " +
                                 (known ? std::to_string(cred.uid) : std::string("unknown")) +
                                 " may not use the control socket");
        reply["denied"] = true;
        self->write(*c, encode(reply));
        return;
    }
    if (!self->make_room(cred.uid)) {
        c->close_after = true;
        self->write(*c, encode(error_reply("too many control clients; try again")));
        return;
    }
    c->uid = cred.uid;
    c->pid = cred.pid;
    c->admitted = true;
    ++self->admitted_;
    ++self->per_uid_[cred.uid];
    uv_timer_start(
        &c->timer,
        [](uv_timer_t* t) {
            auto* cl = static_cast<Client*>(t->data);
            cl->server->close_client(*cl);
        },
        limits::idle_timeout_ms, 0);
    self->update_reading(*c);
}

bool ControlServer::make_room(std::uint32_t uid) {
    // The victim is an idle client of the process holding the most idle clients (SO_PEERCRED
    // names it), the oldest of them (clients_ is in connection order): a stuck or hostile
    // script that reconnects as fast as it is evicted cycles through its own connections
    // and never reaches the operator's sluicectl, while a request in progress is never cut.
    auto evict_oldest_idle = [this](auto&& eligible, std::string_view reason) {
        auto idle = [&](const Client& x) {
            return x.admitted && !x.closing && !x.busy && eligible(x);
        };
        std::map<pid_t, std::size_t> held;
        pid_t top = 0;
        std::size_t most = 0;
        for (auto& [id, x] : clients_) {
            if (idle(*x) && ++held[x->pid] > most) {
                most = held[x->pid];
                top = x->pid;
            }
        }
        for (auto& [id, x] : clients_) {
            if (most != 0 && idle(*x) && x->pid == top) {
                ++evicted_;
                evict_log_.note(reason, std::to_string(x->uid));  // daemon/flood_log.hpp
                close_client(*x);
                return true;
            }
        }
        return false;
    };
    auto it = per_uid_.find(uid);
    if (it != per_uid_.end() && it->second >= limits::max_clients_per_uid &&
        !evict_oldest_idle([uid](const Client& x) { return x.uid == uid; }, "uid_limit")) {
        return false;
    }
    if (admitted_ >= limits::max_clients &&
        !evict_oldest_idle([](const Client&) { return true; }, "client_limit")) {
        return false;
    }
    return true;
}

void ControlServer::update_reading(Client& c) {
    if (c.closing) {
        return;
    }
    // Reading pauses while a request is in progress or replies pile up unread: the input
    // a client can make us hold stays bounded by one read plus one line, its output by
    // limits::pause_output plus one reply.
    bool want = !c.busy && !c.eof && !c.close_after && c.bytes_pending < limits::pause_output;
    auto* s = reinterpret_cast<uv_stream_t*>(&c.pipe);
    if (want && !c.reading) {
        c.reading = uv_read_start(
                        s,
                        [](uv_handle_t* h, std::size_t, uv_buf_t* b) {
                            auto* cl = static_cast<Client*>(h->data);
                            *b = uv_buf_init(cl->buf.data(), static_cast<unsigned>(cl->buf.size()));
                        },
                        on_read) == 0;
    } else if (!want && c.reading) {
        uv_read_stop(s);
        c.reading = false;
    }
}

void ControlServer::on_read(uv_stream_t* s, ssize_t n, const uv_buf_t* buf) {
    auto* c = static_cast<Client*>(s->data);
    ControlServer* self = c->server;
    if (n == 0) {
        return;
    }
    if (n < 0) {
        if (n != UV_EOF) {
            self->close_client(*c);
            return;
        }
        c->eof = true;
        self->update_reading(*c);
        self->process(*c);
        return;
    }
    c->reader.feed(std::string_view(buf->base, static_cast<std::size_t>(n)));
    self->process(*c);
}

void ControlServer::process(Client& c) {
    if (c.processing) {
        return;
    }
    c.processing = true;
    // Requests already read wait while replies are unread (limits::pause_output): a client
    // that pipelines requests and never reads makes us hold no more than that.
    while (!c.busy && !c.closing && !c.close_after && c.bytes_pending < limits::pause_output) {
        auto line = c.reader.next();
        if (!line && c.reader.overflow()) {
            c.close_after = true;
            write(c, encode(error_reply("request line longer than " + std::to_string(limits::line) +
                                        " bytes; closing")));
            break;
        }
        if (!line && c.eof) {
            line = c.reader.take_rest();  // a last request ended by EOF instead of '\n'
        }
        if (!line) {
            break;
        }
        if (line->find_first_not_of(" \t") == std::string::npos) {
            continue;  // blank lines are keep-alives, not requests
        }
        auto parsed = parse_request(*line);
        if (!parsed.request) {
            write(c, encode(error_reply(parsed.error)));
            continue;
        }
        c.busy = true;
        uv_timer_stop(&c.timer);
        update_reading(c);
        std::weak_ptr<int> alive = alive_;
        std::uint64_t id = c.id;
        Respond respond = [this, alive, id](json reply) {
            if (alive.expired()) {
                return;
            }
            auto it = clients_.find(id);
            if (it == clients_.end()) {
                return;  // the client left while its request ran
            }
            Client& cl = *it->second;
            cl.busy = false;
            write(cl, encode(reply));
            if (cl.closing) {
                return;
            }
            uv_timer_start(
                &cl.timer,
                [](uv_timer_t* t) {
                    auto* x = static_cast<Client*>(t->data);
                    x->server->close_client(*x);
                },
                limits::idle_timeout_ms, 0);
            update_reading(cl);
            process(cl);
        };
        // A handler bug must cost one request, never the daemon.
        try {
            handler_(std::move(*parsed.request), respond);
        } catch (const std::exception& e) {
            LogLine(Level::error, "control_error").kv("error", e.what());
            if (clients_.count(id) != 0 && c.busy) {
                respond(error_reply(std::string("internal error: ") + e.what()));
            }
        }
    }
    c.processing = false;
    maybe_finish(c);
}

void ControlServer::write(Client& c, std::string text) {
    if (c.closing) {
        return;
    }
    auto* w = new WriteReq;
    w->text = std::move(text);
    w->req.data = &c;
    ++c.writes_pending;
    c.bytes_pending += w->text.size();
    uv_buf_t b = uv_buf_init(w->text.data(), static_cast<unsigned>(w->text.size()));
    int rc = uv_write(&w->req, reinterpret_cast<uv_stream_t*>(&c.pipe), &b, 1,
                      [](uv_write_t* req, int status) {
                          std::unique_ptr<WriteReq> wr(reinterpret_cast<WriteReq*>(req));
                          auto* cl = static_cast<Client*>(req->data);
                          --cl->writes_pending;
                          cl->bytes_pending -= wr->text.size();
                          if (cl->closing) {
                              if (cl->writes_pending == 0 && cl->handles == 0) {
                                  delete cl;
                              }
                              return;
                          }
                          if (status < 0) {
                              cl->server->close_client(*cl);
                              return;
                          }
                          cl->server->update_reading(*cl);
                          cl->server->process(*cl);  // requests held back by the pause
                      });
    if (rc != 0) {
        --c.writes_pending;
        c.bytes_pending -= w->text.size();
        delete w;
        close_client(c);
        return;
    }
    if (c.bytes_pending > limits::max_output) {
        close_client(c);  // it does not read its replies
        return;
    }
    update_reading(c);
}

void ControlServer::maybe_finish(Client& c) {
    if (c.closing || c.busy || c.writes_pending != 0) {
        return;
    }
    if (c.close_after || (c.eof && c.reader.buffered() == 0)) {
        close_client(c);
    }
}

void ControlServer::close_client(Client& c) {
    if (c.closing) {
        return;
    }
    c.closing = true;
    clients_.erase(c.id);
    if (c.admitted) {
        c.admitted = false;
        --admitted_;
        auto it = per_uid_.find(c.uid);
        if (it != per_uid_.end() && --it->second == 0) {
            per_uid_.erase(it);
        }
    }
    // Pending writes are cancelled by uv_close: their callbacks run before the close
    // callbacks, and the last one to finish frees the client.
    auto done = [](uv_handle_t* h) {
        auto* cl = static_cast<Client*>(h->data);
        if (--cl->handles == 0 && cl->writes_pending == 0) {
            delete cl;
        }
    };
    uv_close(reinterpret_cast<uv_handle_t*>(&c.pipe), done);
    uv_close(reinterpret_cast<uv_handle_t*>(&c.timer), done);
}

json rates_report(const Config& config, const rates::LocalStore& store, const policy::Maps& maps,
                  const json& body, rates::Micros now) {
    const auto settings = rates::Settings::from_config(config);
    const auto st = store.stats(now);
    json r{{"ok", true},
           {"interval_ms", config.rates.interval.count()},
           {"action", config.rates.tarpit ? "tarpit" : "refuse"},
           {"table",
            {{"capacity", st.capacity}, {"live", st.live}, {"evictions_live", st.evictions_live}}}};
    json limits = json::array();
    const std::optional<IpAddr> client = [&]() -> std::optional<IpAddr> {
        auto it = body.find("client");
        if (it == body.end() || it->is_null() || !it->is_string()) {
            return std::nullopt;
        }
        return parse_ip(it->get<std::string>());
    }();
    if (auto it = body.find("client"); it != body.end() && !it->is_null() && !client) {
        return error_reply("rates: \"client\" must be an IP address");
    }
    if (client) {
        r["client"] = format_ip(*client);
        auto l = maps.find_cidr(policy::MapId::rate_exempt, *client);
        r["exempt"] = l.found();
        if (l.found()) {
            r["exempt_by"] = "map rate_exempt " + l.key + (l.source.empty() ? "" : " " + l.source);
        }
        for (const auto& u : rates::usage(store, settings, *client, now)) {
            json row{{"limit", rates::limit_name(u.limit)},
                     {"key_kind", rates::key_kind_name(u.key_kind)},
                     {"key", rates::key_text(*client, u.key_kind)},
                     {"count", u.count},
                     {"level", u.verdict.level},
                     {"over", !u.verdict.allowed}};
            if (!u.verdict.allowed) {
                row["retry_after_ms"] = u.verdict.retry_after / 1000;
            }
            limits.push_back(std::move(row));
        }
    } else {
        for (std::size_t l = 0; l < rates::kLimitKinds; ++l) {
            for (std::size_t k = 0; k < rates::kKeyKinds; ++k) {
                limits.push_back(
                    {{"limit", rates::limit_name(static_cast<rates::LimitKind>(l))},
                     {"key_kind", rates::key_kind_name(static_cast<rates::KeyKind>(k))},
                     {"count", settings.count[l][k]}});
            }
        }
    }
    r["limits"] = std::move(limits);
    return r;
}

}  // namespace sluice::control
