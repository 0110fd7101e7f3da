"""Fixtures shared by every test: the toy model and its bundle, an ONNX Runtime backend on it, and the import
blocker that proves the runtime runs without torch (or onnx) in a subprocess.

The toy bundle is built by `toy_bundle.py` beside this file (hand-written ONNX graphs with a known analytic
objective); tests reach it only through these fixtures.
"""

from __future__ import annotations

import os

# One compute thread per test process: `make test` runs two pytest workers on a 2-core box, and torch's and
# OpenMP's default pools (one thread per core each) would oversubscribe it and spin (set before torch loads).
os.environ.setdefault("OMP_NUM_THREADS", "1")
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from toy_bundle import ToyModel, make_toy_bundle

from defectgen.runtime.backends.ort import OrtBackend
from defectgen.runtime.bundle import Bundle

REPO = Path(__file__).resolve().parents[1]


def blocker_code(blocked: Sequence[str] = ("torch",), *, report: bool = False) -> str:
    """Python source that makes importing any of `blocked` (and their submodules) raise ImportError.

    With `report`, the process also prints "torch-free" (or "TORCH LOADED") on stderr when it exits.
    """
    code = textwrap.dedent(f"""
        import atexit, sys
        class _Blocked:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {tuple(blocked)!r}:
                    raise ImportError(f"{{name}} is blocked in this test: the runtime must not import it")
        sys.meta_path.insert(0, _Blocked())
    """)
    if report:
        code += ('atexit.register(lambda: print("TORCH LOADED" if "torch" in sys.modules else "torch-free", '
                 'file=sys.stderr))\n')
    return code


@pytest.fixture(scope="session")
def run_blocked() -> Callable[..., subprocess.CompletedProcess[str]]:
    """`run_blocked(code, blocked=("torch",), report=False, timeout=120)`: run `code` in a fresh interpreter (cwd:
    the repository) with those packages blocked; returns the completed process (text output)."""

    def run(code: str, *, blocked: Sequence[str] = ("torch",), report: bool = False,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        src = blocker_code(blocked, report=report) + textwrap.dedent(code)
        return subprocess.run([sys.executable, "-c", src], capture_output=True, text=True, timeout=timeout, cwd=REPO,
                              check=False)

    return run


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Runtime caches of the whole session (and its subprocesses) go to a temp folder, not the user's."""
    old = os.environ.get("DEFECTGEN_CACHE")
    os.environ["DEFECTGEN_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield Path(os.environ["DEFECTGEN_CACHE"])
    if old is None:
        os.environ.pop("DEFECTGEN_CACHE", None)
    else:
        os.environ["DEFECTGEN_CACHE"] = old


@pytest.fixture(scope="session")
def toy_model() -> type[ToyModel]:
    """The toy model class: `toy_model(res=8, types=[...])`."""
    return ToyModel


@pytest.fixture(scope="session")
def toy_bundle_factory() -> Callable[..., Path]:
    """`toy_bundle_factory(out, model=None, spaces=..., batches=..., nan_above=None)`: write a toy bundle."""
    return make_toy_bundle


@pytest.fixture(scope="session")
def run_bundle() -> Callable[..., Path]:
    """`run_bundle(folder, res=8, nan_above=None)`: a toy bundle for `defectgen run` (types good/crack/hole,
    batches 1 and 4, wplus/w/z) at model resolution `res`."""

    def make(folder: Path, *, res: int = 8, nan_above: float | None = None) -> Path:
        return make_toy_bundle(folder, model=ToyModel(res=res), nan_above=nan_above)

    return make


@pytest.fixture(scope="session")
def assert_step_gradient() -> Callable[..., None]:
    """`assert_step_gradient(session, feeds)`: an ONNX Runtime step graph's `grad` output agrees with central
    finite differences of its summed `terms` along 3 random unit directions (tolerance 1 % of |grad|)."""

    def check(sess: object, feeds: dict[str, np.ndarray], *, eps: float = 3e-3, seed: int = 3) -> None:
        def f(latent: np.ndarray) -> float:
            out = sess.run(["terms"], {**feeds, "latent": latent.astype(np.float32)})  # type: ignore[attr-defined]
            return float(out[0].astype(np.float64).sum())

        grad = sess.run(["grad"], feeds)[0].astype(np.float64)  # type: ignore[attr-defined]
        rng = np.random.default_rng(seed)
        for _ in range(3):
            d = rng.standard_normal(grad.shape)
            d /= np.linalg.norm(d)
            fd = (f(feeds["latent"] + eps * d) - f(feeds["latent"] - eps * d)) / (2 * eps)
            assert abs(fd - float((grad * d).sum())) <= 1e-2 * np.linalg.norm(grad)

    return check


@pytest.fixture(scope="module")
def toy() -> ToyModel:
    return ToyModel()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory, toy: ToyModel) -> Bundle:
    return Bundle.load(make_toy_bundle(tmp_path_factory.mktemp("toy") / "bundle", model=toy))


@pytest.fixture(scope="module")
def backend(bundle: Bundle) -> Iterator[OrtBackend]:
    with OrtBackend(bundle, threads=1) as b:
        yield b

