"""The bench's count of a process's reads and writes (perf stat's tracepoints) and context switches."""
import os
import subprocess
import sys
import threading
import time

import pytest

from bench import syscalls
from bench.ab import syscall_report

# As perf printed it here for `perf stat -x , -e <the two events>,cycles true`.
PERF_OUTPUT = """\
1,,syscalls:sys_enter_read,297779,100.00,,
0,,syscalls:sys_enter_write,297779,100.00,,
<not supported>,,cycles,0,100.00,,
"""


def test_counts_are_read_by_name_and_unreadable_ones_left_out():
    assert syscalls.parse(PERF_OUTPUT) == {"reads": 1, "writes": 0}
    assert syscalls.parse("<not supported>,,syscalls:sys_enter_read,0,100.00,,\n") == {}


def test_the_report_gives_medians_per_request_and_a_dash_for_what_was_not_counted():
    counted = {("gateway", "long"): [{"reads": 0.8, "writes": 0.81, "waits": 0.05, "preempted": 0.5},
                                     {"reads": 0.7, "writes": 0.7, "waits": 0.04, "preempted": 0.4},
                                     {"reads": 2.0, "writes": 2.0, "waits": 1.0, "preempted": 1.0}],
               ("bare", "long"): [{"reads": 0.55, "writes": 0.56, "waits": 0.01}]}
    lines = syscall_report(counted, ["gateway", "bare"], ["long"]).splitlines()
    assert lines[2] == "| long | gateway | 0.800 | 0.810 | 0.050 | 0.500 |"
    assert lines[3] == "| long | bare | 0.550 | 0.560 | 0.010 | – |"


def test_a_thread_that_sleeps_is_counted_as_waiting():
    thread = f"{os.getpid()}/{threading.get_native_id()}"
    before = syscalls.switches([os.getpid()])[thread]
    for _ in range(3):
        time.sleep(0.001)
    after = syscalls.switches([os.getpid()])[thread]
    assert after["waits"] - before["waits"] >= 3
    assert after["preempted"] >= before["preempted"]


@pytest.mark.skipif(not syscalls.available(), reason="perf cannot count system calls here")
def test_a_process_that_writes_a_thousand_times_and_reads_five_hundred_is_counted_so():
    child = subprocess.Popen([sys.executable, "-c", "import os, sys\nzero = os.open('/dev/zero', os.O_RDONLY)\n"
                              "sys.stdin.readline()\nfor _ in range(1000): os.write(2, b'')\n"
                              "for _ in range(500): os.read(zero, 1)\nprint('written', flush=True)\nsys.stdin.readline()\n"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        with syscalls.Counting([child.pid]) as counting:
            child.stdin.write("go\n")
            child.stdin.flush()
            assert child.stdout.readline() == "written\n"
        assert 1000 <= counting.counts["writes"] < 1100
        assert 500 <= counting.counts["reads"] < 600
    finally:
        child.stdin.write("done\n")
        child.stdin.close()
        child.wait(timeout=10)
