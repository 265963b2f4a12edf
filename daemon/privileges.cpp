#include "daemon/privileges.hpp"

#include <grp.h>
#include <linux/capability.h>
#include <pwd.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace sluice {
namespace {

// getpwnam_r/getgrnam_r buffers: sysconf's hint, grown on ERANGE (a group with many
// members needs more than the hint).
constexpr std::size_t kMaxLookupBuffer = 1 << 20;

std::string errno_text(const char* what) {
    return std::string(what) + ": " + std::strerror(errno);
}

// capget/capset through the raw system calls (capget(2)): libcap is not a dependency.
bool get_caps(__user_cap_data_struct (&data)[2]) {
    __user_cap_header_struct header{};
    header.version = _LINUX_CAPABILITY_VERSION_3;
    return ::syscall(SYS_capget, &header, data) == 0;
}

bool set_caps(__user_cap_data_struct (&data)[2]) {
    __user_cap_header_struct header{};
    header.version = _LINUX_CAPABILITY_VERSION_3;
    return ::syscall(SYS_capset, &header, data) == 0;
}

}  // namespace

std::string resolve_identity(const std::string& user, const std::string& group, Identity& out) {
    std::vector<char> buf(4096);
    passwd pw{};
    passwd* pw_found = nullptr;
    int rc = 0;
    while ((rc = ::getpwnam_r(user.c_str(), &pw, buf.data(), buf.size(), &pw_found)) == ERANGE &&
           buf.size() < kMaxLookupBuffer) {
        buf.resize(buf.size() * 2);
    }
    if (rc != 0 || pw_found == nullptr) {
        return "server.user \"" + user + "\": no such user" +
               (rc != 0 ? std::string(" (") + std::strerror(rc) + ")" : std::string()) +
               " (the Debian package creates \"sluice\"; or set [server] user)";
    }
    out.user = user;
    out.uid = pw.pw_uid;

    std::vector<char> gbuf(4096);
    struct group gr{};
    struct group* gr_found = nullptr;
    while ((rc = ::getgrnam_r(group.c_str(), &gr, gbuf.data(), gbuf.size(), &gr_found)) ==
               ERANGE &&
           gbuf.size() < kMaxLookupBuffer) {
        gbuf.resize(gbuf.size() * 2);
    }
    if (rc != 0 || gr_found == nullptr) {
        return "server.group \"" + group + "\": no such group" +
               (rc != 0 ? std::string(" (") + std::strerror(rc) + ")" : std::string()) +
               " (or set [server] group)";
    }
    out.group = group;
    out.gid = gr.gr_gid;

    // The user's own supplementary groups (getgrouplist(3)), with the configured group
    // as the one it always has; root's (or the invoking operator's) are never kept.
    int n = 32;
    std::vector<gid_t> groups(static_cast<std::size_t>(n));
    while (::getgrouplist(user.c_str(), out.gid, groups.data(), &n) < 0) {
        groups.resize(static_cast<std::size_t>(n));
    }
    groups.resize(static_cast<std::size_t>(n));
    out.groups = std::move(groups);
    return {};
}

std::string drop_privileges(const Identity& id) {
    if (::geteuid() != 0) {
        return "not running as root: cannot become " + id.user;
    }
    // Every capability but CAP_NET_BIND_SERVICE leaves the bounding set while we still
    // hold CAP_SETPCAP, so not even an exec could raise one again (capabilities(7)).
    for (int cap = 0; cap <= CAP_LAST_CAP; ++cap) {
        if (cap != CAP_NET_BIND_SERVICE && ::prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 &&
            errno != EINVAL) {
            return errno_text("prctl(PR_CAPBSET_DROP)");
        }
    }
    // Keep the permitted set across setuid, so CAP_NET_BIND_SERVICE can be raised again
    // below; everything else is cleared there.
    if (::prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0) {
        return errno_text("prctl(PR_SET_KEEPCAPS)");
    }
    if (::setgroups(id.groups.size(), id.groups.data()) != 0) {
        return errno_text("setgroups");
    }
    if (::setresgid(id.gid, id.gid, id.gid) != 0) {
        return errno_text("setresgid");
    }
    if (::setresuid(id.uid, id.uid, id.uid) != 0) {
        return errno_text("setresuid");
    }
    ::prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0);
    __user_cap_data_struct caps[2]{};
    const unsigned bit = 1U << (CAP_NET_BIND_SERVICE % 32);
    caps[CAP_NET_BIND_SERVICE / 32].effective = bit;
    caps[CAP_NET_BIND_SERVICE / 32].permitted = bit;
    if (!set_caps(caps)) {
        return errno_text("capset(CAP_NET_BIND_SERVICE)");
    }
    // No ambient capabilities (root has none; a caller's are not ours to keep).
    ::prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
    // The drop must hold: root cannot come back (CERT POS37-C).
    if (::setuid(0) == 0 || ::getuid() != id.uid || ::geteuid() != id.uid ||
        ::getgid() != id.gid || ::getegid() != id.gid) {
        return "the identity change did not hold";
    }
    return {};
}

Identity current_identity() {
    Identity id;
    id.uid = ::getuid();
    id.gid = ::getgid();
    int n = ::getgroups(0, nullptr);
    if (n > 0) {
        id.groups.resize(static_cast<std::size_t>(n));
        n = ::getgroups(n, id.groups.data());
        id.groups.resize(n > 0 ? static_cast<std::size_t>(n) : 0);
    }
    std::vector<char> buf(4096);
    passwd pw{};
    passwd* pw_found = nullptr;
    if (::getpwuid_r(id.uid, &pw, buf.data(), buf.size(), &pw_found) == 0 && pw_found) {
        id.user = pw.pw_name;
    } else {
        id.user = std::to_string(id.uid);
    }
    struct group gr{};
    struct group* gr_found = nullptr;
    if (::getgrgid_r(id.gid, &gr, buf.data(), buf.size(), &gr_found) == 0 && gr_found) {
        id.group = gr.gr_name;
    } else {
        id.group = std::to_string(id.gid);
    }
    return id;
}

bool can_bind_low_ports() {
    __user_cap_data_struct caps[2]{};
    if (!get_caps(caps)) {
        return false;
    }
    return (caps[CAP_NET_BIND_SERVICE / 32].effective & (1U << (CAP_NET_BIND_SERVICE % 32))) != 0;
}

std::string format_groups(const std::vector<gid_t>& groups) {
    std::string out;
    for (gid_t g : groups) {
        out += (out.empty() ? "" : ",") + std::to_string(g);
    }
    return out.empty() ? "-" : out;
}

}  // namespace sluice
