"""Read-only bundles and a read-only install still run: every cache goes to the user cache folder, and nothing
appears beside a bundle, a zip or inside the installed package."""

from __future__ import annotations

import shutil
import stat
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cli_helpers import invoke, jobs_log, make_images

from defectgen import EXAMPLES_DIR
from defectgen.runtime.bundle import default_bundle_path


def _listing(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under `root` with its size and mtime: any write shows up as a difference."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def _read_only(root: Path) -> None:
    for p in [root, *root.rglob("*")]:
        p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def _writable(root: Path) -> None:
    for p in [root, *root.rglob("*")]:
        p.chmod(p.stat().st_mode | stat.S_IWUSR)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    folder = tmp_path / "user-cache"
    monkeypatch.setenv("DEFECTGEN_CACHE", str(folder))
    yield folder


def test_read_only_bundle_folder_and_zip_run(tmp_path: Path, cache: Path, run_bundle: Callable[..., Path]) -> None:
    bundle = run_bundle(tmp_path / "ro" / "bundle")
    with zipfile.ZipFile(tmp_path / "ro" / "bundle.zip", "w") as zf:
        for p in sorted(bundle.rglob("*")):
            zf.write(p, p.relative_to(bundle))
    make_images(tmp_path / "images", 2)
    before = _listing(tmp_path / "ro")
    _read_only(tmp_path / "ro")
    try:
        for i, source in enumerate((bundle, tmp_path / "ro" / "bundle.zip")):
            code, _, err = invoke("run", "--bundle", source, "--images", tmp_path / "images", "--random-masks", 1,
                                  "--out", tmp_path / f"out{i}", "--backend", "ort-cpu")
            assert code == 0, err
            assert len(jobs_log(tmp_path / f"out{i}")) == 2
    finally:
        _writable(tmp_path / "ro")
    assert _listing(tmp_path / "ro") == before  # nothing written beside or into the bundle or the zip
    assert list(cache.glob("bundles/*/ort/*.onnx")) and list(cache.glob("zips/*/manifest.json"))


def test_installed_default_bundle_is_left_untouched(tmp_path: Path, cache: Path) -> None:
    package_bundle = default_bundle_path()
    before = _listing(package_bundle)
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(sorted(EXAMPLES_DIR.glob("*.png"))[0], images / "part.png")
    code, _, err = invoke("run", "--images", images, "--random-masks", 1, "--types", "hole", "--steps", 1,
                          "--out", tmp_path / "out", "--backend", "ort-cpu")
    assert code == 0, err
    assert _listing(package_bundle) == before
    assert list(cache.glob("bundles/*/ort/*.onnx"))


def test_unusable_cache_is_a_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            run_bundle: Callable[..., Path]) -> None:
    (tmp_path / "a-file").write_text("x")  # a cache "folder" under a file cannot be created, even by root
    monkeypatch.setenv("DEFECTGEN_CACHE", str(tmp_path / "a-file" / "cache"))
    make_images(tmp_path / "images", 1)
    code, _, err = invoke("run", "--bundle", run_bundle(tmp_path / "b"), "--images", tmp_path / "images",
                          "--random-masks", 1, "--out", tmp_path / "out", "--backend", "ort-cpu")
    assert code == 2 and "DEFECTGEN_CACHE" in err and len(err.strip().splitlines()) == 1, err
