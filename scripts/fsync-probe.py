#!/usr/bin/env python3
"""What this disk charges for fdatasync, outside nublar, for reading the log
benchmark's figures: the cost of one pwrite + fdatasync by size, on a file
that grows (as the log's segments do) and on a file overwritten in place
(zero-filled first, as with the zero_fill option), and how much four threads
syncing the same file at once gain over one (the kernel's own batching).

Usage: python3 scripts/fsync-probe.py [DIR]   (default: current directory;
the probe file is deleted afterwards)
"""
import os
import sys
import threading
import time

DIRECTORY = sys.argv[1] if len(sys.argv) > 1 else "."
PATH = os.path.join(DIRECTORY, "nublar-fsync-probe.bin")


def sync_cost_us(size, prefill, count=1500):
    fd = os.open(PATH, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
    try:
        if prefill:
            os.pwrite(fd, b"\0" * (size * count), 0)
            os.fsync(fd)
        data = b"x" * size
        started = time.perf_counter()
        for index in range(count):
            os.pwrite(fd, data, index * size)
            os.fdatasync(fd)
        return (time.perf_counter() - started) / count * 1e6
    finally:
        os.close(fd)
        os.unlink(PATH)


def syncs_per_second(threads, size=10_000, seconds=3.0):
    fd = os.open(PATH, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
    lock = threading.Lock()
    state = {"position": 0, "syncs": 0}
    deadline = time.time() + seconds
    data = b"x" * size

    def work():
        while time.time() < deadline:
            with lock:
                position = state["position"]
                state["position"] += size
            os.pwrite(fd, data, position)
            os.fdatasync(fd)
            with lock:
                state["syncs"] += 1

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    os.close(fd)
    os.unlink(PATH)
    return state["syncs"] / seconds


for size in (10_000, 40_000, 100_000):
    grown = sync_cost_us(size, prefill=False)
    overwritten = sync_cost_us(size, prefill=True)
    print(f"pwrite+fdatasync of {size:>6} B: growing file {grown:6.0f} us, zero-filled file {overwritten:6.0f} us")
one = syncs_per_second(1)
four = syncs_per_second(4)
print(f"10 KB appends, each followed by its own fdatasync: 1 thread {one:.0f}/s, "
      f"4 threads on one file {four:.0f}/s ({four / one:.2f}x)")
