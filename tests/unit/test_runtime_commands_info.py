"""`defectgen info`: what kind of model a bundle holds, in its first lines."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from defectgen.runtime.commands.info import info_text


def test_info_says_patch_mode_and_missing_encoder(tmp_path: Path, toy_model: Callable[..., object],
                                                  toy_bundle_factory: Callable[..., Path]) -> None:
    patch = toy_bundle_factory(tmp_path / "patch", model=toy_model(res=16), patch_scale=2.0)
    text = info_text(patch)
    assert "patch mode: 16 px windows at 2 data px per model px" in text and "no encoder" in text
    whole = info_text(toy_bundle_factory(tmp_path / "whole"))
    assert "whole parts" in whole and "no encoder" not in whole
