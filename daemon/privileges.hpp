#pragma once
// Who sluiced serves as. Started as root (the way many operators run daemons, and the
// only way to bind port 25 without capabilities), it opens its listeners, reads its
// config and TLS files and makes its control socket, then becomes `[server] user` and
// `[server] group` before any shard runs, so no byte from a client is read with root's
// rights. Started as another user (systemd's User=sluice), it cannot and does not change.
//
//   resolve_identity()   the user's uid, the group's gid and the user's own supplementary
//                        groups (initgroups(3): what systemd gives a User= service too)
//   drop_privileges()    setgroups, setgid, setuid, keeping CAP_NET_BIND_SERVICE alone
//                        (capabilities(7)), so a reload can still open a listener below
//                        1024; every other capability leaves the bounding set
//   current_identity()   what the process is now (the log line, the tests)
//
// Trust: the names come from the operator's config. Promises: a drop that does not fully
// happen is an error (the daemon exits), never a half-privileged daemon; after a drop the
// process cannot get root back (setuid(0) is checked to fail).

#include <sys/types.h>

#include <string>
#include <vector>

namespace sluice {

struct Identity {
    std::string user;
    std::string group;
    uid_t uid = 0;
    gid_t gid = 0;
    std::vector<gid_t> groups;  // supplementary, the user's own (may include gid)
};

// Looks `user` and `group` up in the system's databases. Returns "" or the error.
std::string resolve_identity(const std::string& user, const std::string& group, Identity& out);

// The process becomes `id` (must be called as root, before any other thread but the
// libuv thread pool's exists; glibc applies set*id to every thread). Returns "" or why not.
std::string drop_privileges(const Identity& id);

// The process's real identity and supplementary groups now; names where they resolve.
Identity current_identity();

// True when the effective capability set holds CAP_NET_BIND_SERVICE (ports below 1024).
bool can_bind_low_ports();

// "1000,1001" for the log.
std::string format_groups(const std::vector<gid_t>& groups);

}  // namespace sluice
