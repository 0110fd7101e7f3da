"""`Generator.run`, the Python API's folder run, is what `defectgen run` does: same files, same bytes, resume."""

from __future__ import annotations

from pathlib import Path

from cli_helpers import invoke, make_images, pngs

from defectgen.api import Generator


def test_run_into_a_folder_is_the_command(run_bundle, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """`Generator.run` writes the folder `defectgen run` writes, byte for byte, and resumes it."""
    bundle = run_bundle(tmp_path / "bundle")
    make_images(tmp_path / "parts", 3)
    with Generator.load(bundle, threads=1) as gen:
        summary = gen.run(tmp_path / "api_out", images=tmp_path / "parts", random_masks=2, types=["crack"], seed=5)
        assert (summary.ok, summary.failed, summary.total) == (6, 0, 6)
        again = gen.run(tmp_path / "api_out", images=tmp_path / "parts", random_masks=2, types=["crack"], seed=5)
        assert (again.ok, again.skipped) == (0, 6)
    code, _, err = invoke("run", "--bundle", bundle, "--images", tmp_path / "parts", "--random-masks", 2,
                          "--types", "crack", "--seed", 5, "--out", tmp_path / "cli_out", "--threads", 1)
    assert code == 0, err
    api_files = [p.relative_to(tmp_path / "api_out") for p in pngs(tmp_path / "api_out")]
    assert api_files == [p.relative_to(tmp_path / "cli_out") for p in pngs(tmp_path / "cli_out")]
    for rel in api_files:
        assert (tmp_path / "api_out" / rel).read_bytes() == (tmp_path / "cli_out" / rel).read_bytes(), rel
    assert (tmp_path / "api_out" / "index.html").is_file()
