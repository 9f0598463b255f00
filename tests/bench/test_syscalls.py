"""The bench's count of a process's reads, writes and context switches (perf stat's tracepoints)."""
import subprocess
import sys

import pytest

from bench import syscalls
from bench.ab import syscall_report

# As perf 6.1 printed it here for `perf stat -x , -e <the three events>,cycles true`.
PERF_OUTPUT = """\
1,,syscalls:sys_enter_read,297779,100.00,,
0,,syscalls:sys_enter_write,297779,100.00,,
7,,context-switches,297779,100.00,,
<not supported>,,cycles,0,100.00,,
"""


def test_counts_are_read_by_name_and_unreadable_ones_left_out():
    assert syscalls.parse(PERF_OUTPUT) == {"reads": 1, "writes": 0, "switches": 7}
    assert syscalls.parse("<not supported>,,syscalls:sys_enter_read,0,100.00,,\n") == {}


def test_the_report_gives_medians_per_request_and_a_dash_for_what_was_not_counted():
    counted = {("gateway", "long"): [{"reads": 0.8, "writes": 0.81, "switches": 0.05},
                                     {"reads": 0.7, "writes": 0.7, "switches": 0.04},
                                     {"reads": 2.0, "writes": 2.0, "switches": 1.0}],
               ("bare", "long"): [{"reads": 0.55, "writes": 0.56}]}
    lines = syscall_report(counted, ["gateway", "bare"], ["long"]).splitlines()
    assert lines[2] == "| long | gateway | 0.800 | 0.810 | 0.050 |"
    assert lines[3] == "| long | bare | 0.550 | 0.560 | – |"


@pytest.mark.skipif(not syscalls.available(), reason="perf cannot count system calls here")
def test_a_process_that_writes_a_thousand_times_is_counted_so():
    child = subprocess.Popen([sys.executable, "-c", "import os, sys\nsys.stdin.readline()\n"
                              "for _ in range(1000): os.write(2, b'')\nprint('written', flush=True)\nsys.stdin.readline()\n"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        with syscalls.Counting([child.pid]) as counting:
            child.stdin.write("go\n")
            child.stdin.flush()
            assert child.stdout.readline() == "written\n"
        assert 1000 <= counting.counts["writes"] < 1100
        assert counting.counts["reads"] >= 1
    finally:
        child.stdin.write("done\n")
        child.stdin.close()
        child.wait(timeout=10)
