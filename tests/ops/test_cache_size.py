"""The last-level cache size that benchmarks and the roofline's triad size their arrays from,
against lscpu (util-linux reads the same sysfs files independently)."""

import shutil
import subprocess

import pytest

from moeweave.cpu import _parse_size, last_level_cache_bytes


@pytest.mark.parametrize(
    ("text", "expected"), [("48K\n", 48 << 10), ("105M", 105 << 20), ("1G", 1 << 30), ("4096", 4096), ("", 0)]
)
def test_parse_size_reads_sysfs_units(text, expected):
    assert _parse_size(text) == expected


@pytest.mark.skipif(shutil.which("lscpu") is None, reason="lscpu (util-linux) is not installed")
def test_largest_cache_matches_lscpu():
    listing = subprocess.run(["lscpu", "--caches=ONE-SIZE", "--bytes"], capture_output=True, text=True)
    sizes = [int(line) for line in listing.stdout.split() if line.isdigit()]
    if listing.returncode != 0 or not sizes:
        pytest.skip("lscpu lists no caches on this machine")
    assert last_level_cache_bytes() == max(sizes)
