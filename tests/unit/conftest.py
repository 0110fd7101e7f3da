"""Shared runtime fixtures: one toy model, its bundle and an ONNX Runtime backend on it (per test module)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from defectgen.runtime.bundle import Bundle
from defectgen.runtime.ort import OrtBackend

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from toy_bundle import ToyModel, make_toy_bundle  # noqa: E402


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
