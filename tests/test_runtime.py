"""Process settings the entry points make (span_jobs.runtime)."""

import os

import pytest

from span_jobs.runtime import keep_freed_memory


def glibc() -> bool:
    try:
        return bool(os.confstr("CS_GNU_LIBC_VERSION"))
    except (ValueError, OSError):
        return False


@pytest.mark.skipif(not glibc(), reason="glibc's malloc only")
def test_glibc_malloc_takes_the_settings():
    assert keep_freed_memory() is True  # mallopt refuses values out of its range: 0
