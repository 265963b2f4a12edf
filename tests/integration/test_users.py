"""`sluicectl user add|passwd|del`: AUTH users in the LMDB `users` map.

No daemon is needed: each test gets a config whose maps.dir is a temp dir and checks the
map with `sluicectl map list users`. Hashes are checked with the system's libcrypt (the
same crypt(3) sluiced uses), so a stored value is known to verify the password and no
other. The terminal case runs the tool on a pseudo-terminal to see echo turned off.

The binary comes from $SLUICECTL (default build/tools/sluicectl under the repo root).
"""

import ctypes
import os
import pathlib
import pty
import select
import subprocess
import termios
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
SLUICECTL = os.environ.get("SLUICECTL", str(REPO / "build" / "tools" / "sluicectl"))

CONFIG = """
[server]
hostname = "mx.example.test"

[[listener]]
name = "mx"
address = "127.0.0.1:2525"
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

_libcrypt = ctypes.CDLL("libcrypt.so.1")
_libcrypt.crypt.restype = ctypes.c_char_p
_libcrypt.crypt.argtypes = [ctypes.c_char_p, ctypes.c_char_p]


def crypt_ok(hash_, password):
    out = _libcrypt.crypt(password.encode(), hash_.encode())
    return out is not None and out.decode() == hash_


@pytest.fixture
def cfg(tmp_path):
    (tmp_path / "maps").mkdir()
    path = tmp_path / "sluice.toml"
    path.write_text(CONFIG)
    return path


def ctl(cfg, *args, stdin=None):
    return subprocess.run([SLUICECTL, "--config", str(cfg), *args], input=stdin,
                          capture_output=True, text=True, timeout=60)


def users(cfg):
    r = ctl(cfg, "map", "list", "users")
    assert r.returncode == 0, r.stderr
    out = {}
    for line in r.stdout.splitlines():
        key, _, value = line.partition(" ")
        out[key] = value
    return out


def split_value(value):
    hash_, _, rest = value.partition(";")
    return hash_, rest


def test_add_stores_a_salted_yescrypt_hash_only(cfg):
    r = ctl(cfg, "user", "add", "alice@example.test", stdin="Tr0ub4dor&3\n")
    assert r.returncode == 0, r.stderr
    assert "Tr0ub4dor" not in r.stdout + r.stderr
    value = users(cfg)["alice@example.test"]
    assert "Tr0ub4dor" not in value
    hash_, rest = split_value(value)
    assert hash_.startswith("$y$")
    assert rest == ""
    assert crypt_ok(hash_, "Tr0ub4dor&3")
    assert not crypt_ok(hash_, "Tr0ub4dor&4")
    # The same password for another user gets another salt.
    assert ctl(cfg, "user", "add", "bob", stdin="Tr0ub4dor&3\n").returncode == 0
    assert split_value(users(cfg)["bob"])[0] != hash_


def test_add_refuses_an_existing_user(cfg):
    assert ctl(cfg, "user", "add", "alice", stdin="one\n").returncode == 0
    before = users(cfg)["alice"]
    r = ctl(cfg, "user", "add", "alice", stdin="two\n")
    assert r.returncode == 1
    assert "exists" in r.stderr
    assert users(cfg)["alice"] == before


def test_senders_are_normalised_and_kept_by_passwd(cfg):
    r = ctl(cfg, "user", "add", "alice", "--senders", "Alice@Example.TEST,@Sales.Example.test.,<>",
            stdin="first\n")
    assert r.returncode == 0, r.stderr
    hash1, rest = split_value(users(cfg)["alice"])
    assert rest == "senders=Alice@example.test,@sales.example.test,<>"
    r = ctl(cfg, "user", "passwd", "alice", stdin="second\n")
    assert r.returncode == 0, r.stderr
    assert "second" not in r.stdout + r.stderr
    hash2, rest2 = split_value(users(cfg)["alice"])
    assert rest2 == rest
    assert hash2 != hash1
    assert crypt_ok(hash2, "second")
    assert not crypt_ok(hash2, "first")


@pytest.mark.parametrize("senders", ["", "alice", "x@", "@", "a@b..c", "a@[192.0.2.1]",
                                     "a@x.test,,b@x.test"])
def test_bad_senders_are_usage_errors(cfg, senders):
    r = ctl(cfg, "user", "add", "alice", "--senders", senders, stdin="pw\n")
    assert r.returncode == 2, (senders, r.stderr)
    assert "alice" not in users(cfg)


def test_passwd_and_del_need_an_existing_user(cfg):
    r = ctl(cfg, "user", "passwd", "nobody", stdin="pw\n")
    assert r.returncode == 1
    assert "no user" in r.stderr
    r = ctl(cfg, "user", "del", "nobody")
    assert r.returncode == 1
    assert ctl(cfg, "user", "add", "carol", stdin="pw\n").returncode == 0
    r = ctl(cfg, "user", "del", "carol")
    assert r.returncode == 0, r.stderr
    assert "carol" not in users(cfg)


def test_password_never_on_the_command_line(cfg):
    for args in (["--password", "hunter2"], ["--password=hunter2"], ["-p", "hunter2"]):
        r = ctl(cfg, "user", "add", "dave", *args, stdin="pw\n")
        assert r.returncode == 2, args
        assert "hunter2" not in r.stdout + r.stderr
    assert "dave" not in users(cfg)


@pytest.mark.parametrize("stdin", ["", "\n", "\r\n", "a\0b\n", "x" * 512 + "\n"])
def test_unusable_passwords_are_refused(cfg, stdin):
    r = ctl(cfg, "user", "add", "erin", stdin=stdin)
    assert r.returncode == 2, r.stderr
    assert "erin" not in users(cfg)


def test_only_the_first_line_is_the_password(cfg):
    assert ctl(cfg, "user", "add", "frank", stdin="line one\r\nline two\n").returncode == 0
    hash_, _ = split_value(users(cfg)["frank"])
    assert crypt_ok(hash_, "line one")


@pytest.mark.parametrize("name", ["bad name", "tab\tname", "ctl\x01", "x" * 256])
def test_bad_user_names(cfg, name):
    r = ctl(cfg, "user", "add", name, stdin="pw\n")
    assert r.returncode == 2


def test_usage_and_config_errors(cfg, tmp_path):
    assert ctl(cfg, "user").returncode == 2
    assert ctl(cfg, "user", "rename", "a").returncode == 2
    assert ctl(cfg, "user", "add").returncode == 2
    assert ctl(cfg, "user", "del", "a", "b").returncode == 2
    r = ctl(cfg, "user", "--help")
    assert r.returncode == 0 and "passwd" in r.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\nnot_a_key = 1\n")
    r = ctl(bad, "user", "add", "x", stdin="pw\n")
    assert r.returncode == 2


# --- on a terminal ----------------------------------------------------------------------

def _read_until(fd, needle, timeout=10):
    buf = b""
    deadline = time.time() + timeout
    while needle not in buf:
        left = deadline - time.time()
        assert left > 0, f"timed out waiting for {needle!r}, got {buf!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 1024)
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
    return buf


def run_on_tty(cfg, name, first, second):
    master, slave = pty.openpty()
    proc = subprocess.Popen([SLUICECTL, "--config", str(cfg), "user", "add", name],
                            stdin=slave, stdout=subprocess.PIPE, stderr=slave)
    seen = b""
    try:
        seen += _read_until(master, b"New password")
        assert not termios.tcgetattr(slave)[3] & termios.ECHO, "echo must be off"
        os.write(master, first.encode() + b"\n")
        seen += _read_until(master, b"Retype")
        os.write(master, second.encode() + b"\n")
        out, _ = proc.communicate(timeout=30)
        rest = b""
        while select.select([master], [], [], 0.2)[0]:
            try:
                chunk = os.read(master, 1024)
            except OSError:
                break
            if not chunk:
                break
            rest += chunk
        seen += rest
        assert termios.tcgetattr(slave)[3] & termios.ECHO, "echo restored"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
        os.close(slave)
    return proc.returncode, out.decode(), seen.decode(errors="replace")


def test_terminal_input_is_not_echoed_and_asked_twice(cfg):
    rc, out, screen = run_on_tty(cfg, "gina", "s3cr3t-on-tty", "s3cr3t-on-tty")
    assert rc == 0, screen
    assert "s3cr3t" not in screen + out
    hash_, _ = split_value(users(cfg)["gina"])
    assert crypt_ok(hash_, "s3cr3t-on-tty")


def test_terminal_mismatch_changes_nothing(cfg):
    rc, out, screen = run_on_tty(cfg, "hank", "typed-once", "typed-twice")
    assert rc == 1
    assert "do not match" in screen
    assert "typed" not in screen + out
    assert "hank" not in users(cfg)
