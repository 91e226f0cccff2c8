"""Run one command and report its own wall time and peak memory.

    python -m bench.measure RESULT.json -- CMD ARG...

The command inherits stdin, stdout and stderr. RESULT.json gets ``{"returncode", "wall_s",
"cpu_s", "maxrss_kb"}``: the wall time from spawn to exit (start-up included), the CPU
seconds (user + system) and the RSS high-water mark of that one process, from ``os.wait4``. This small wrapper exists because a child's
``ru_maxrss`` starts at the RSS of the process that spawned it (Linux folds the parent's
mm into the child's high-water mark at exec), and the benchmark's own process is big after
building the warehouse; here the floor is this wrapper's ~15 MB.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time


def main(argv: list[str]) -> int:
    if len(argv) < 4 or argv[2] != "--":
        print("usage: python -m bench.measure RESULT.json -- CMD ARG...", file=sys.stderr)
        return 2
    result_path, cmd = argv[1], argv[3:]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    proc.returncode = code  # already reaped: keep Popen from waiting again
    with open(result_path, "w", encoding="utf-8") as fh:
        cpu = usage.ru_utime + usage.ru_stime
        json.dump(
            {"returncode": code, "wall_s": wall, "cpu_s": cpu, "maxrss_kb": usage.ru_maxrss}, fh
        )
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
