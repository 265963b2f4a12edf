#!/usr/bin/python3
"""Why the spool zero-fills its segments ahead (SpoolOptions::zero_ahead).

bench/fdatasync_probe.py [DIR] [N]

Appends N batch-sized writes (6.6 KB, about six 1 KB messages with their records), each
followed by fdatasync, to a file in DIR (default: $TMPDIR or /var/tmp, put it on the spool's
disk), four ways, interleaved twice:
  append     the file grows with every write (size and extents committed by each fdatasync)
  fallocate  posix_fallocate'd first (unwritten extents: still converted at each fdatasync)
  zero       zero-filled and synced first (each fdatasync flushes data only)
  chunk      zero-filled 1 MiB ahead as it goes, like the spool
and prints the mean wall time per fdatasync, its p50/p99, and the CPU time the process and the
whole machine spent per fdatasync. Compare the rows of one run: absolute numbers depend on the
disk and on what else runs.
"""
import os
import sys
import tempfile
import time

BATCH = 6 * 1100
CHUNK = 1 << 20


def busy_ticks():
    f = open("/proc/stat").readline().split()
    vals = [int(x) for x in f[1:9]]
    return sum(vals) - vals[3] - vals[4]  # minus idle and iowait


def run(directory, mode, n):
    fd, path = tempfile.mkstemp(prefix="fdatasync-probe-", dir=directory)
    try:
        if mode == "fallocate":
            os.posix_fallocate(fd, 0, n * BATCH + 4096)
            os.fsync(fd)
        elif mode == "zero":
            os.pwrite(fd, b"\0" * (n * BATCH + 4096), 0)
            os.fsync(fd)
        buf = b"x" * BATCH
        zeroed = 0
        lat = []
        c0, b0, t0 = os.times(), busy_ticks(), time.perf_counter()
        off = 0
        for _ in range(n):
            if mode == "chunk" and off + BATCH > zeroed:
                os.pwrite(fd, b"\0" * CHUNK, max(zeroed, off + BATCH))
                zeroed = max(zeroed, off + BATCH) + CHUNK
            a = time.perf_counter()
            os.pwrite(fd, buf, off)
            os.fdatasync(fd)
            lat.append(time.perf_counter() - a)
            off += BATCH
        wall = time.perf_counter() - t0
        c1, b1 = os.times(), busy_ticks()
    finally:
        os.close(fd)
        os.unlink(path)
    lat.sort()
    hz = os.sysconf("SC_CLK_TCK")
    proc = (c1.user + c1.system - c0.user - c0.system) / n * 1e6
    box = (b1 - b0) / hz / n * 1e6
    print(f"{mode:10s} us_per_sync={wall / n * 1e6:6.0f} p50={lat[n // 2] * 1e6:6.0f} "
          f"p99={lat[n * 99 // 100] * 1e6:6.0f} process_cpu_us={proc:5.0f} machine_cpu_us={box:5.0f}")


def main():
    directory = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("TMPDIR", "/var/tmp")
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 3000
    for _ in range(2):
        for mode in ("append", "fallocate", "zero", "chunk"):
            run(directory, mode, n)


if __name__ == "__main__":
    main()
