"""The daemon's malloc settings (gateway/pipeline/memory.py), each in a fresh Python process: threads share the
limited arenas, and free memory between chunks still in use goes back to the kernel."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

def run_python(code: str, **env: str) -> str:
    child_env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"} | env
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, env=child_env | {"PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    return done.stdout


THREADS = """
    import threading
    import sys
    sys.path[:0] = ["tests", "tests/e2e"]
    from e2e_gateway import malloc_heaps
    {setup}
    start = threading.Barrier(8)

    def work():
        start.wait()  # all at once: each thread that finds the arenas busy would get one of its own
        for _ in range(200):
            kept = [bytes(1000 + i) for i in range(500)]  # over pymalloc's 512 bytes: malloc's own
            del kept

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(malloc_heaps())
"""


def test_threads_share_the_limited_arenas():
    from gateway.pipeline.memory import ARENAS

    free = int(run_python(THREADS.format(setup="")))
    limited = int(run_python(THREADS.format(setup="from gateway.pipeline.memory import limit_arenas; "
                                                  "assert limit_arenas()")))
    assert free >= 3, f"the control: eight busy threads made only {free} arenas"
    assert limited <= ARENAS - 1, f"{limited} heaps besides the main arena, with at most {ARENAS} arenas"
    # an operator's MALLOC_ARENA_MAX is glibc's to follow: not overridden
    assert run_python("from gateway.pipeline.memory import limit_arenas; print(limit_arenas())",
                      MALLOC_ARENA_MAX="4").strip() == "False"


def test_free_memory_between_chunks_in_use_goes_back():
    out = run_python("""
        from pathlib import Path
        from gateway.pipeline.memory import give_back

        def rss_kib():
            return int(next(l for l in Path("/proc/self/status").read_text().splitlines()
                            if l.startswith("VmRSS:")).split()[1])

        chunks = [bytes(2000 + i % 7) for i in range(60_000)]  # ~120 MB from malloc
        kept = chunks[::50]  # every 50th stays: the heap's top is never free, so glibc keeps the rest
        del chunks
        before = rss_kib()
        assert give_back()
        print(before, rss_kib(), len(kept))
    """)
    before, after, _ = (int(x) for x in out.split())
    assert before - after > 60_000, f"RSS {before} KiB before, {after} KiB after giving back"
