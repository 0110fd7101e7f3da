"""The dependency rule (DESIGN.md): `data`, `runtime`, `errors` and the CLI module never import torch.

Each module is imported in a fresh interpreter whose import system refuses `torch` (a meta-path finder
raising ImportError), so a top-level or import-time `import torch` anywhere in its import graph fails the
test, even when torch happens to be installed. MODULES lists every module of data/ and runtime/.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Every module of the torch-free layers, discovered from the tree so a new module can't be forgotten.
MODULES = ["defectgen.errors", "defectgen.cli"] + sorted(
    ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
    for layer in ("data", "runtime")
    for p in (ROOT / "defectgen" / layer).rglob("*.py")
)

BLOCKER = textwrap.dedent(
    """
    import importlib, sys

    class NoTorch:
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError(f"torch is blocked in this test (imported as {name!r})")
            return None

    sys.meta_path.insert(0, NoTorch())
    importlib.import_module(sys.argv[1])
    leaked = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
    if leaked:
        raise SystemExit(f"torch modules loaded: {leaked}")
    """
)


@pytest.mark.parametrize("module", MODULES)
def test_module_imports_without_torch(module):
    proc = subprocess.run([sys.executable, "-c", BLOCKER, module], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"importing {module} touched torch:\n{proc.stderr[-2000:]}"


def test_blocker_catches_torch():
    """The guard itself works: a module that imports torch fails."""
    proc = subprocess.run([sys.executable, "-c", BLOCKER, "torch.nn"], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "torch is blocked" in proc.stderr
