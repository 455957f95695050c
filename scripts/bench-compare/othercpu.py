#!/usr/bin/env python3
"""CPU used by processes that are not the benchmark's (scripts/bench-compare.sh):
the machine is shared, and another engineer's build or test running during a
measurement takes CPU from it. "Ours" are the processes in the benchmark's
network namespaces and the benchmark script with all its descendants; kernel
threads are left out (their CPU is mostly the lab's own softirq work).

  othercpu.py snapshot SCRIPT_PID NETNS... > FILE   records the CPU times
  othercpu.py diff FILE1 FILE2                      prints the seconds of CPU
      the other processes used between the two snapshots (utime + stime of
      those alive at both; processes started in between count whole). A lower
      bound: a process that starts and ends between the snapshots is missed
      (its parent's cutime would count it, but also all the CPU its child used
      before the first snapshot, so it is not used).
"""
import json
import os
import sys

HZ = os.sysconf("SC_CLK_TCK")
PF_KTHREAD = 0x00200000


def proc_stat(pid):
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    rest = text[text.rindex(")") + 2:].split()
    # rest[0] is field 3 (state): field N is rest[N - 3].
    return {
        "ppid": int(rest[1]),
        "flags": int(rest[6]),
        "ticks": int(rest[11]) + int(rest[12]),  # utime + stime
        "start": int(rest[19]),
    }


def snapshot(script_pid, names):
    ours_ns = set()
    for name in names:
        try:
            ours_ns.add(os.stat(f"/run/netns/{name}").st_ino)
        except OSError:
            pass
    procs = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            st = proc_stat(entry)
            st["ns"] = os.stat(f"/proc/{entry}/ns/net").st_ino
        except (OSError, ValueError, IndexError):
            continue
        procs[int(entry)] = st
    # The script and its descendants.
    mine = {script_pid}
    grew = True
    while grew:
        grew = False
        for pid, st in procs.items():
            if pid not in mine and st["ppid"] in mine:
                mine.add(pid)
                grew = True
    out = {}
    for pid, st in procs.items():
        if pid in mine or st["ns"] in ours_ns or st["flags"] & PF_KTHREAD or pid == 2 or st["ppid"] == 2:
            continue
        out[str(pid)] = [st["start"], st["ticks"]]
    return out


def diff(a, b):
    ticks = 0
    for pid, (start, t) in b.items():
        if pid in a and a[pid][0] == start:
            ticks += max(0, t - a[pid][1])
        elif pid not in a or a[pid][0] != start:
            ticks += t
    return ticks / HZ


def main():
    if sys.argv[1] == "snapshot":
        json.dump(snapshot(int(sys.argv[2]), sys.argv[3:]), sys.stdout)
    elif sys.argv[1] == "diff":
        with open(sys.argv[2]) as f:
            a = json.load(f)
        with open(sys.argv[3]) as f:
            b = json.load(f)
        print(f"{diff(a, b):.2f}")
    else:
        sys.exit("usage: othercpu.py snapshot SCRIPT_PID NETNS... | diff FILE1 FILE2")


if __name__ == "__main__":
    main()
