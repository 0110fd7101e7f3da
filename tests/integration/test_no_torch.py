"""The dependency rule (docs/design.md): `data`, `runtime`, `measure`, `errors` and the CLI module never import
torch, neither when imported nor while they run.

Each module is imported in a fresh interpreter whose import system refuses `torch` (a meta-path finder
raising ImportError), so a top-level or import-time `import torch` anywhere in its import graph fails the
test, even when torch happens to be installed. MODULES lists every module of data/, runtime/ and measure/.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
# Every module of the torch-free layers, discovered from the tree so a new module can't be forgotten.
MODULES = ["defectgen.errors", "defectgen.cli", "defectgen.api"] + sorted(
    ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
    for layer in ("data", "runtime", "measure")
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


def test_inversion_runs_without_torch(tmp_path: Path, toy: Any, bundle: Any, run_blocked: Callable[..., Any]) -> None:
    """A whole load + backend + inversion in a process where `import torch` raises."""
    good, mask, stitched, types = toy.inputs(2)
    np.savez(tmp_path / "inputs.npz", good=good, mask=mask, stitched=stitched, types=np.array(types))
    r = run_blocked(f"""
        import numpy as np
        from defectgen.runtime.backends import load_backend
        from defectgen.runtime.bundle import Bundle
        from defectgen.runtime.jobs.invert import InversionBatch, InversionConfig, invert
        bundle = Bundle.load({str(bundle.root)!r})
        d = np.load({str(tmp_path / "inputs.npz")!r})
        batch = InversionBatch(d["good"], d["mask"], d["stitched"], [str(t) for t in d["types"]])
        with load_backend(bundle, "ort-cpu", threads=1) as be:
            res = invert(be, bundle, batch, config=InversionConfig(space="z", steps=3))
        assert not res.failed.any()
        assert "torch" not in sys.modules
    """)
    assert r.returncode == 0, r.stderr


def test_bench_runs_without_torch(bundle: Any, run_blocked: Callable[..., Any]) -> None:
    r = run_blocked(f"""
        from defectgen.measure.bench import run_bench
        r = run_bench({str(bundle.root)!r}, batches=(1,), backend="ort-cpu", quick=True)
        assert r["step"] and "torch" not in sys.modules
    """)
    assert r.returncode == 0, r.stderr


def test_info_imports_neither_torch_nor_onnx(run_blocked: Callable[..., Any]) -> None:
    r = run_blocked("""
        import defectgen.runtime.commands.info
        assert "torch" not in sys.modules and "onnx" not in sys.modules
    """, blocked=("torch", "onnx"))
    assert r.returncode == 0, r.stderr


def test_the_python_api_generates_without_torch(run_blocked: Callable[..., Any]) -> None:
    r = run_blocked("""
        import numpy as np
        from defectgen.api import Generator
        rng = np.random.default_rng(0)
        part = rng.integers(90, 160, (128, 128, 3)).astype(np.uint8)
        with Generator.load(threads=1) as gen:
            d, = gen.generate(part, types="hole", seed=0)
        assert d.ok and d.mask.any() and d.image.shape == part.shape
        assert "torch" not in sys.modules
    """)
    assert r.returncode == 0, r.stderr
