"""release_freed_memory reaches glibc's malloc_trim where there is one. Its effect (the freed heap going back) is
measured by benchmarks/scale.py's anonymous-memory column, not here: how much glibc keeps after a free depends on
the allocator's history, so a unit test of it would be flaky."""
import platform

from llmprune.engine.free_memory import release_freed_memory


def test_release_runs_exactly_where_glibc_is():
    assert release_freed_memory() is (platform.libc_ver()[0] == "glibc")
