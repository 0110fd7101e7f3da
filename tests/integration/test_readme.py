"""README.md's recipes and Python API snippet, executed as a new user would run them.

The code blocks are extracted from the README itself (the ```bash blocks under "### 1.", "### 2.", "### 3." and
the ```python block under "## Python API") and run, unchanged except for recipe 3's budgets below, in a fresh
folder holding the inputs the README names: `my_parts/` (good parts, `part_00.png` ...), `my_masks/` (a target
mask per part, same stems) and `my_dataset/` (an MVTec-layout category). Recipe 3 trains for real; so that it
runs in a test, its training budgets and model size are cut by the substitutions in `TINY` (the commands and
their other options stay the README's).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from defectgen.data.imageio import read_image, read_mask, write_image, write_mask
from defectgen.data.masks import dilate
from defectgen.data.procedural import make_dataset
from defectgen.runtime.bundle import Bundle

README = Path(__file__).resolve().parents[2] / "README.md"
BIN = Path(sys.executable).parent
TINY = {  # recipe 3 only: minute-sized training and a small export, everything else as written
    "--minutes 100": "--steps 2 --batch 4",
    "--minutes 25": "--steps 2 --batch 4",
    "--window 32": "--window 16",
    "--out my_bundle": "--out my_bundle --spaces wplus --batch 4",
}


def readme_blocks(heading: str, lang: str) -> list[str]:
    """The ```lang blocks of the README section whose heading starts with `heading`."""
    text = README.read_text(encoding="utf-8")
    start = text.index(heading)
    level = text[: start].rsplit("\n", 1)[-1] + heading.split(" ")[0]  # e.g. "###"
    rest = text[start + len(heading):]
    end = re.search(rf"^#{{1,{len(level)}}} ", rest, re.M)
    section = rest[: end.start()] if end else rest
    return re.findall(rf"^```{lang}\n(.*?)^```", section, re.M | re.S)


def run_bash(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600, check=False)


@pytest.fixture(scope="module")
def user_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What a user brings: 128 px parts like the default model's, a mask per part, and a small dataset."""
    root = tmp_path_factory.mktemp("readme")
    data = make_dataset(root / "nuts", res=128, n_good=4, n_defect=1, n_test_good=0, seed=3).parent
    rng = np.random.default_rng(0)
    for i, src in enumerate(sorted((data / "train" / "good").glob("*.png"))):
        image = read_image(src)
        write_image(root / "my_parts" / f"part_{i:02d}.png", image)
        mask = np.zeros(image.shape[:2], np.uint8)
        y, x = rng.integers(50, 78, 2)
        mask[y - 2:y + 3, x - 14:x + 15] = 1  # a thin horizontal scratch on the part's middle
        write_mask(root / "my_masks" / f"part_{i:02d}.png", mask)
    make_dataset(root / "my_dataset", res=48, n_good=4, n_defect=3, n_test_good=1, seed=0)
    return root


def test_recipe_1_random_defects_on_your_images(user_folder: Path) -> None:
    (script,) = readme_blocks("### 1.", "bash")
    r = run_bash(script, user_folder)
    assert r.returncode == 0, r.stderr
    out = user_folder / "out_random"
    lines = [json.loads(x) for x in (out / "jobs.jsonl").read_text().splitlines()]
    assert len(lines) == 16 and {x["type"] for x in lines} == {"crack", "hole"}
    assert all(x["status"] == "ok" for x in lines)
    for x in lines:
        image, mask = read_image(out / x["outputs"]["image"]), read_mask(out / x["outputs"]["mask"])
        assert image.shape == (128, 128, 3) and mask.any()
    assert (out / "index.html").is_file() and (out / "contact_sheet.png").is_file()


def test_recipe_2_your_own_masks(user_folder: Path) -> None:
    (script,) = readme_blocks("### 2.", "bash")
    r = run_bash(script, user_folder)
    assert r.returncode == 0, r.stderr
    out = user_folder / "out_masks"
    lines = [json.loads(x) for x in (out / "jobs.jsonl").read_text().splitlines()]
    assert len(lines) == 4 and all(x["status"] == "ok" and x["type"] == "crack" for x in lines)
    for x in lines:
        target = read_mask(user_folder / "my_masks" / Path(x["inputs"]["mask"]).name)
        label = read_mask(out / x["outputs"]["mask"])
        # the label is G's own mask within the feathered target: it covers the mask the user gave
        assert (label & target).sum() >= 0.8 * target.sum()
        assert not (label & (dilate(target, 12) == 0)).any()


@pytest.mark.slow
def test_recipe_3_your_own_dataset_train_export_run(user_folder: Path) -> None:
    (script,) = readme_blocks("### 3.", "bash")
    for long, short in TINY.items():
        assert long in script, f"README recipe 3 no longer has {long!r}: update TINY"
        script = script.replace(long, short)
    r = run_bash(script, user_folder)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    bundle = Bundle.load(user_folder / "my_bundle")
    # an encoder in the bundle: its graph takes windows, the inversion starts from it and its `dom` term is live
    assert bundle.patch is not None and bundle.has_encoder and bundle.defaults.init == "encoder"
    assert bundle.default_lambdas["dom"] > 0
    window = bundle.patch.window
    assert [t.shape[1:] for t in bundle.manifest.files["encoder.onnx"].inputs] == [[3, window, window],
                                                                                  [1, window, window]]
    assert json.loads((user_folder / "my_bundle" / "verify.json").read_text())["passed"]
    assert bundle.defaults.mask_shape == "generated" and bundle.defaults.guide_weight == 0
    lines = [json.loads(x) for x in (user_folder / "out_mine" / "jobs.jsonl").read_text().splitlines()]
    assert len(lines) == 10 and all(x["status"] == "ok" for x in lines)  # (4 train + 1 test good) x 2


def test_python_api_snippet(user_folder: Path) -> None:
    (code,) = readme_blocks("## Python API", "python")
    r = subprocess.run([sys.executable, "-c", code], cwd=user_folder, capture_output=True, text=True, timeout=300,
                       check=False)
    assert r.returncode == 0, r.stderr
    written = sorted(user_folder.glob("defect_*.png"))
    assert len(written) == 8  # 2 images x 2 defects, image + mask each
    assert len(r.stdout.strip().splitlines()) == 4
