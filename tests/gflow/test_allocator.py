"""gflow asks torch's CPU allocator for page-aligned blocks (gflow/allocator.py) only where
that is still true: before torch loads, and never over the user's own setting."""

import json
import os
import subprocess
import sys

import pytest

from gflow.allocator import VARIABLE

# Three state-sized tensors (8 MB each), their addresses modulo a page, and the variable.
PROBE = ("import json, os, torch; blocks = [torch.empty(2**20, dtype=torch.float64) for _ in range(3)]; "
         f"print(json.dumps([[b.data_ptr() % 4096 for b in blocks], os.environ.get({VARIABLE!r})]))")


def _probe(imports: str, env_value: str | None) -> tuple[list[int], str | None]:
    env = {k: v for k, v in os.environ.items() if k != VARIABLE}
    if env_value is not None:
        env[VARIABLE] = env_value
    out = subprocess.run([sys.executable, "-c", f"{imports}; {PROBE}"], capture_output=True, text=True,
                         check=True, env=env).stdout
    offsets, value = json.loads(out)
    return offsets, value


@pytest.mark.skipif(sys.platform != "linux", reason="torch's page-aligned allocation is Linux's")
def test_gflow_imported_before_torch_gets_page_aligned_state_sized_blocks():
    offsets, value = _probe("import gflow", None)
    assert value == "1"
    assert offsets == [0, 0, 0], f"blocks not page-aligned: offsets {offsets}"


def test_the_users_own_setting_is_kept():
    assert _probe("import gflow", "0")[1] == "0"


def test_after_torch_has_loaded_gflow_claims_nothing():
    # torch read the variable at its import: setting it now would say what is not so.
    assert _probe("import torch, gflow", None)[1] is None
