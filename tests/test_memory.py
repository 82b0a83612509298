"""trim_heap gives the C heap's free pages back: what a KEMI worker freed after a change must not stay in it."""

import subprocess
import sys

FREED_THEN_TRIMMED = """
from c4kemi.node.memory import trim_heap

def rss_mib():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) // 1024

blocks = [bytes(1024) for _ in range(100_000)]  # 100 MiB on the C heap (over 512 bytes: not pymalloc's)
pin = bytes(1024)  # a live block above them: glibc cannot give them back by lowering the heap's top
del blocks
before = rss_mib()
trimmed = trim_heap()
print(trimmed, before - rss_mib())
"""


def test_the_heap_freed_by_a_large_change_goes_back_to_the_kernel():
    out = subprocess.run([sys.executable, "-c", FREED_THEN_TRIMMED], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "True" and int(out[1]) >= 80, out  # nearly all of the 100 MiB freed

