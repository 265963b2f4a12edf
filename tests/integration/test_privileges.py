"""Privilege drop (daemon/privileges.hpp): started as root, sluiced opens its listeners
(one below 1024 here), files and control socket, then serves as [server] user/group
with that user's own groups and CAP_NET_BIND_SERVICE alone, before the first client is
greeted; it refuses to serve as root unless allow_root; a reload opens another low port.
Started as an unprivileged user it keeps that identity and says why a low port fails.

Root only (the drop needs it): skipped elsewhere, run by `make test` as root.
"""
import grp
import os
import pathlib
import pwd
import random
import shutil
import smtplib
import socket
import subprocess
import tempfile
import time

import pytest

from harness import SLUICED, SLUICECTL, Daemon, free_port, wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the privilege drop needs root")

USER, GROUP = "nobody", "nogroup"
CAP_NET_BIND_SERVICE = 1 << 10


def free_low_port():
    """A free TCP port below 1024 on 127.0.0.1, chosen at run time."""
    ports = list(range(600, 1024))
    random.shuffle(ports)
    for p in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", p))
                return p
            except OSError:
                continue
    pytest.skip("no free port below 1024")


CONFIG = """
[server]
hostname = "mx.example.test"
shards = 2
user = "{user}"
group = "{group}"
allow_root = false

[[listener]]
name = "mx"
address = "127.0.0.1:{port}"
role = "mx"

[domains]
local = ["example.test"]

[maps]
dir = "maps"

[routes]
"example.test" = "maildir:maildir"

[spool]
dir = "spool"

[control]
socket = "control.sock"
"""


def owned_daemon(port, user=USER, group=GROUP):
    """A Daemon whose directory belongs to `user` (the spool and maildir are theirs)."""
    d = Daemon(config=CONFIG.replace("{user}", user).replace("{group}", group))
    text = d.config.read_text().replace(f"127.0.0.1:{d.port}", f"127.0.0.1:{port}")
    d.config.write_text(text)
    d.port = port
    uid, gid = pwd.getpwnam(USER).pw_uid, grp.getgrnam(GROUP).gr_gid
    os.chmod(d.dir, 0o755)
    for p in [d.dir, d.dir / "maps"]:
        os.chown(p, uid, gid)
    return d


def status_of(pid):
    """{thread id: {"Uid": [...], "Gid": [...], "Groups": [...], "CapEff": int, ...}}"""
    out = {}
    for task in pathlib.Path(f"/proc/{pid}/task").iterdir():
        fields = {}
        for line in (task / "status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("Uid", "Gid", "Groups"):
                fields[key] = [int(x) for x in value.split()]
            elif key in ("CapEff", "CapPrm", "CapInh", "CapAmb", "CapBnd"):
                fields[key] = int(value.strip(), 16)
        out[task.name] = fields
    return out


def test_root_drops_to_the_configured_user_before_the_first_greeting():
    port = free_low_port()
    d = owned_daemon(port)
    uid, gid = pwd.getpwnam(USER).pw_uid, grp.getgrnam(GROUP).gr_gid
    groups = sorted(set(os.getgrouplist(USER, gid)))
    d.start(wait=False)
    try:
        assert wait_for(lambda: "event=started" in d.log() or d.proc.poll() is not None), d.log()
        assert d.proc.poll() is None, d.log()
        # No client has connected yet: every thread already is the configured identity.
        assert "event=session" not in d.log()
        tasks = status_of(d.proc.pid)
        assert len(tasks) >= 3  # main + 2 shards at least
        for tid, st in tasks.items():
            assert st["Uid"] == [uid] * 4, (tid, st)
            assert st["Gid"] == [gid] * 4, (tid, st)
            assert sorted(st["Groups"]) == groups, (tid, st)
            assert st["CapAmb"] == 0 and st["CapInh"] == 0, (tid, st)
        main = tasks[str(d.proc.pid)]
        # What a reload needs to open another port below 1024, and nothing else.
        assert main["CapEff"] == CAP_NET_BIND_SERVICE and main["CapPrm"] == CAP_NET_BIND_SERVICE
        assert main["CapBnd"] == CAP_NET_BIND_SERVICE
        log = d.log()
        assert log.index("event=privileges") < log.index("event=started")
        line = d.log_lines("privileges")[0]
        assert f"user={USER} uid={uid}" in line and 'note="dropped root"' in line
        # The low port serves mail, and what it writes belongs to the user.
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
            s.sendmail("a@outside.test", ["user@example.test"], b"Subject: hi\r\n\r\nbody\r\n")
        files = wait_for(d.messages)
        assert files and files[0].stat().st_uid == uid
        for p in (d.dir / "spool").iterdir():
            assert p.stat().st_uid == uid, p
        # The control socket is the user's, for its group (operators in group sluice).
        st = d.control_socket.stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (uid, gid, 0o660)
        assert d.ctl("status").returncode == 0
        # An operator in the daemon's group uses sluicectl without root; others may not,
        # even through a loosened mode (SO_PEERCRED/SO_PEERGROUPS).
        other = pwd.getpwnam("daemon")
        ctl = [SLUICECTL, "--config", str(d.config), "status"]
        member = ["setpriv", f"--reuid={other.pw_uid}", f"--regid={other.pw_gid}",
                  f"--groups={gid}"]
        outsider = ["setpriv", f"--reuid={other.pw_uid}", f"--regid={other.pw_gid}",
                    "--clear-groups"]
        r = subprocess.run(member + ctl, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        os.chmod(d.control_socket, 0o666)
        r = subprocess.run(outsider + ctl, capture_output=True, text=True, timeout=60)
        assert r.returncode != 0 and "may not use the control socket" in r.stderr
        os.chmod(d.control_socket, 0o660)
        # A reload opens a second listener below 1024 (CAP_NET_BIND_SERVICE kept).
        port2 = free_low_port()
        d.config.write_text(d.config.read_text() +
                            f'\n[[listener]]\nname = "low2"\naddress = "127.0.0.1:{port2}"\nrole = "mx"\n')
        r = d.ctl("reload")
        assert r.returncode == 0, r.stdout + r.stderr
        with smtplib.SMTP("127.0.0.1", port2, timeout=10) as s:
            assert s.noop()[0] == 250
        # Changing who it serves as is refused until a restart.
        d.config.write_text(d.config.read_text().replace(f'user = "{USER}"', 'user = "daemon"'))
        r = d.ctl("reload")
        assert r.returncode != 0 and "restart sluiced" in r.stdout + r.stderr
    finally:
        d.stop()
        shutil.rmtree(d.dir, ignore_errors=True)


def test_refuses_to_serve_as_root_unless_allowed():
    d = owned_daemon(free_port(), user="root", group="root")
    d.start(wait=False)
    assert d.proc.wait(timeout=30) != 0
    assert "event=privileges" in d.log() and "does not serve as root" in d.log()
    assert not d.control_socket.exists()
    # allow_root = true: it serves, as root, and says so.
    d.config.write_text(d.config.read_text().replace("allow_root = false", "allow_root = true"))
    d.start()
    try:
        assert status_of(d.proc.pid)[str(d.proc.pid)]["Uid"] == [0] * 4
        assert "serving as root" in d.log_lines("privileges")[-1]
    finally:
        d.stop()
        shutil.rmtree(d.dir, ignore_errors=True)


def test_unknown_user_is_a_clear_error():
    d = owned_daemon(free_port(), user="no-such-user-sluice")
    d.start(wait=False)
    assert d.proc.wait(timeout=30) != 0
    assert 'server.user \\"no-such-user-sluice\\": no such user' in d.log()


def test_started_unprivileged_it_stays_and_explains_low_ports():
    """As systemd's User= without AmbientCapabilities: no identity change; a low port
    in a reload is refused with the reason."""
    d = owned_daemon(free_port(), user="whoever")
    uid, gid = pwd.getpwnam(USER).pw_uid, grp.getgrnam(GROUP).gr_gid
    d.proc = None
    log = open(d.log_path, "ab")
    d.proc = subprocess.Popen(["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups",
                               SLUICED, "--config", str(d.config)],
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        d.wait_ready()
        assert status_of(d.proc.pid)[str(d.proc.pid)]["Uid"] == [uid] * 4
        assert "not started as root" in d.log_lines("privileges")[0]
        assert "low_ports=no" in d.log_lines("privileges")[0]
        low = free_low_port()
        d.config.write_text(d.config.read_text() +
                            f'\n[[listener]]\nname = "low"\naddress = "127.0.0.1:{low}"\nrole = "mx"\n')
        r = subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups",
                            SLUICECTL, "--config", str(d.config), "reload"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode != 0
        assert "CAP_NET_BIND_SERVICE" in r.stdout + r.stderr
    finally:
        d.stop()
        log.close()
        shutil.rmtree(d.dir, ignore_errors=True)


def test_as_the_unit_runs_it_a_reload_opens_a_low_port():
    """User=sluice with AmbientCapabilities=CAP_NET_BIND_SERVICE (setpriv does what
    systemd does): it starts on a low port and a reload adds another."""
    port = free_low_port()
    d = owned_daemon(port, user="whoever")
    uid, gid = pwd.getpwnam(USER).pw_uid, grp.getgrnam(GROUP).gr_gid
    as_unit = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups",
               "--inh-caps=-all,+net_bind_service", "--ambient-caps=-all,+net_bind_service",
               "--bounding-set=-all,+net_bind_service", "--no-new-privs"]
    log = open(d.log_path, "ab")
    d.proc = subprocess.Popen([*as_unit, SLUICED, "--config", str(d.config)],
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        d.wait_ready()
        line = d.log_lines("privileges")[0]
        assert "not started as root" in line and "low_ports=yes" in line
        port2 = free_low_port()
        d.config.write_text(d.config.read_text() +
                            f'\n[[listener]]\nname = "low2"\naddress = "127.0.0.1:{port2}"\nrole = "mx"\n')
        r = subprocess.run([*as_unit, SLUICECTL, "--config", str(d.config), "reload"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        with smtplib.SMTP("127.0.0.1", port2, timeout=10) as s:
            assert s.noop()[0] == 250
    finally:
        d.stop()
        log.close()
        shutil.rmtree(d.dir, ignore_errors=True)
