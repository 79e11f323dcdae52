"""The idle footprint relies on lld laying out the functions that run together
(link/text-order.txt, passed by build.rs). The list names functions by their
mangled symbols, which change with code and with the features cargo resolves;
a list that no longer names the binary's functions costs ~6 MiB of resident
code without failing anything else. Rewrite it with scripts/text-order.sh."""
import os
import pathlib
import platform
import subprocess

import pytest

from conftest import ROOT

# The list names the release build's functions (a debug build has others);
# scripts/test.sh builds it and says where.
RELEASE_BIN = os.environ.get("SCOPEGATE_RELEASE_BIN") or str(
    pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release" / "scopegate"
)


@pytest.mark.skipif(platform.system() != "Linux" or platform.machine() != "x86_64",
                    reason="build.rs orders the code only on x86-64 Linux")
def test_the_text_order_list_names_the_binary_it_is_linked_into():
    if not os.path.exists(RELEASE_BIN):
        pytest.skip(f"no release build at {RELEASE_BIN} (cargo build --release)")
    wanted = set(pathlib.Path(ROOT, "link", "text-order.txt").read_text().split())
    assert len(wanted) > 1000, "link/text-order.txt is nearly empty"
    symbols = subprocess.run(["nm", "--defined-only", RELEASE_BIN], check=True, capture_output=True,
                             text=True).stdout
    present = {line.split()[-1] for line in symbols.splitlines() if line.strip()}
    found = len(wanted & present) / len(wanted)
    assert found >= 0.9, (
        f"only {found:.0%} of link/text-order.txt's {len(wanted)} functions are in {RELEASE_BIN}: "
        "run scripts/text-order.sh")
