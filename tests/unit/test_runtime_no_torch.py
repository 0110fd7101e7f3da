"""The edge runtime never touches torch while it *runs*: a full load + backend + inversion in a subprocess where
`import torch` raises (module imports are covered by tests/unit/test_no_torch.py)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

BLOCK_TORCH = textwrap.dedent("""
    import sys
    class _NoTorch:
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError("torch is blocked in this test: the runtime must not import it")
    sys.meta_path.insert(0, _NoTorch())
""")


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", BLOCK_TORCH + textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=120, cwd=Path(__file__).resolve().parents[2])


def test_inversion_runs_without_torch(tmp_path: Path) -> None:
    r = _run(f"""
        sys.path.insert(0, "tests")
        from pathlib import Path
        from toy_bundle import ToyModel, make_toy_bundle
        from defectgen.runtime.backend import load_backend
        from defectgen.runtime.bundle import Bundle
        from defectgen.runtime.invert import InversionBatch, InversionConfig, invert
        bundle = Bundle.load(make_toy_bundle(Path({str(tmp_path)!r}) / "b"))
        with load_backend(bundle, "ort-cpu", threads=1) as be:
            res = invert(be, bundle, InversionBatch(*ToyModel().inputs(2)), config=InversionConfig(space="z", steps=3))
        assert not res.failed.any()
        assert "torch" not in sys.modules
    """)
    assert r.returncode == 0, r.stderr
