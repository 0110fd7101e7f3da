"""The `defectgen` command line: a thin typer wrapper over library functions.

Every command imports its implementation lazily, so `defectgen run` on an edge box never pays for (or needs)
torch, and `defectgen --help` is instant. Errors the user can fix (`DefectgenError`) print as one line and
exit 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Optional, TypeVar

import typer

from defectgen.errors import DefectgenError

app = typer.Typer(
    help="Synthesize realistic, pixel-labelled industrial defects by in-domain GAN inversion.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
train_app = typer.Typer(help="Train a defect generator and the encoder that starts its inversion (needs \\[train]): "
                             "patch mode (the default model's), or the whole-part alternative.",
                        no_args_is_help=True)
app.add_typer(train_app, name="train")

F = TypeVar("F", bound=Callable[..., object])


def user_errors(fn: F) -> F:
    """Turn a `DefectgenError` into `defectgen: error: <one line>` and exit code 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: object, **kwargs: object) -> object:
        try:
            return fn(*args, **kwargs)
        except DefectgenError as e:
            typer.echo(f"defectgen: error: {e}", err=True)
            raise typer.Exit(2) from None
        except ModuleNotFoundError as e:
            if e.name and e.name.split(".")[0] in {"torch", "onnx", "onnxscript", "safetensors", "tensorrt"}:
                typer.echo(f"defectgen: error: this command needs {e.name!r}; install with "
                           f"`pip install 'defectgen[train]'` (or [trt] for TensorRT)", err=True)
                raise typer.Exit(2) from None
            if e.name and e.name.startswith("defectgen."):
                typer.echo(f"defectgen: error: this command is not built yet ({e.name} is missing)", err=True)
                raise typer.Exit(2) from None
            raise

    return wrapper  # type: ignore[return-value]


def _csv(value: Optional[str]) -> Optional[list[str]]:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


@app.command("make-data")
@user_errors
def make_data(
    out: Path = typer.Argument(..., help="Output folder (MVTec AD category layout)."),
    res: int = typer.Option(128, help="Image side in pixels."),
    n_good: int = typer.Option(200, help="Good training images (train/good)."),
    n_defect: int = typer.Option(40, help="Defective test images per defect type."),
    n_test_good: int = typer.Option(20, help="Good test images (test/good)."),
    seed: int = typer.Option(0, help="Everything is derived from this seed."),
    category: str = typer.Option("nuts", help="Part family: nuts (crack, cut, hole, print), plate (brushed metal: "
                                 "scratch, pit, stain, burr) or fabric (woven cloth: tear, thread, spot, fold)."),
) -> None:
    """Write a procedural dataset (nuts, plate or fabric) in MVTec AD layout, plus a contact sheet."""
    from defectgen.data.procedural import make_dataset

    sheet = make_dataset(out, res=res, n_good=n_good, n_defect=n_defect, n_test_good=n_test_good, seed=seed,
                         category=category)
    typer.echo(f"wrote {category} dataset {out} (contact sheet: {sheet})")


@train_app.command("patch")
@user_errors
def train_patch(
    data: Path = typer.Option(..., help="MVTec-layout category folder."),
    out: Path = typer.Option(..., help="Run folder (checkpoints, logs, sample grids)."),
    window: Optional[int] = typer.Option(None, help="Window side P in model px (default 32)."),
    scale: Optional[float] = typer.Option(None, help="Data px per model px (default 1 = native)."),
    design: Optional[str] = typer.Option(None, help="layered (a defect layer over the real good window, the "
                                                    "default) or full (G draws the whole window)."),
    colour_head: Optional[str] = typer.Option(None, help="G's colour output: tanh (default), linear "
                                                         "(StyleGAN2's, unbounded) or wide (1.2 tanh(x/1.2))."),
    held_in: Optional[int] = typer.Option(None, help="Defect images per type to train on (default: first third)."),
    minutes: Optional[float] = typer.Option(None, help="Wall-clock budget of this call."),
    steps: Optional[int] = typer.Option(None, help="Total steps (default 100000)."),
    batch: Optional[int] = typer.Option(None, help="Windows per step, even (default 32)."),
    seed: Optional[int] = typer.Option(None, help="Random seed (default 0)."),
    sample_every: Optional[int] = typer.Option(None, help="Steps between sample grids (default 200)."),
    ckpt_every: Optional[int] = typer.Option(None, help="Steps between checkpoints (default 200)."),
    augment: Optional[str] = typer.Option(None, help="DiffAugment ops on every D input, comma list of "
                                                     "translation, flip, flipv, color (color:S scales its "
                                                     "ranges, 0 < S <= 1); '' for none (default "
                                                     "translation,color; with --resume it changes the run's "
                                                     "augmentation from there on)."),
    shape_weight: Optional[float] = typer.Option(None, help="Weight of a mask-only shape discriminator on G "
                                                            "(default 0 = none; with --resume it adds one from "
                                                            "there on)."),
    ada_target: Optional[float] = typer.Option(None, help="Adaptive augmentation (rot90, zoom, cutout at a "
                                                          "probability p that rises while the mean sign of D on "
                                                          "reals exceeds this; ADA uses 0.6, about 80 % of reals "
                                                          "called real). Default 0 = off; with --resume it "
                                                          "applies (or stops) from there on."),
    ada_kimg: Optional[float] = typer.Option(None, help="Thousands of windows for the adaptive p to go from 0 "
                                                        "to 1 (default 100)."),
    range_weight: Optional[float] = typer.Option(None, help="Weight of the colour-range term: G's pixels inside "
                                                            "its mask kept within the real defects' 1-99 % range "
                                                            "per type and channel (default 0 = off; with "
                                                            "--resume it applies from there on)."),
    range_types: Optional[str] = typer.Option(None, help="Comma list of the defect types the colour-range term "
                                                         "bounds (default: every type)."),
    init_from: Optional[Path] = typer.Option(None, help="Start from another patch run's nets (run folder or "
                                                        "checkpoint, slim ones too: G and D, fresh optimisers, "
                                                        "step 0); options not given are that run's."),
    resume: bool = typer.Option(False, help="Continue from the last checkpoint in --out."),
    device: Optional[str] = typer.Option(None, help="Torch device, e.g. cpu or cuda:0 (default cuda when "
                                                    "available, else cpu); a resumed run may change it."),
) -> None:
    """Train the patch generator (by default a defect layer over real good windows, native pixel scale)."""
    from defectgen.training.patch_gan import train_patch_cli

    train_patch_cli(data=data, out=out, resume=resume, window=window, scale=scale, design=design,
                    colour_head=colour_head, held_in=held_in,
                    minutes=minutes, steps=steps, batch=batch, seed=seed, sample_every=sample_every,
                    ckpt_every=ckpt_every, augment=augment, shape_weight=shape_weight, ada_target=ada_target,
                    ada_kimg=ada_kimg, range_weight=range_weight, range_types=range_types,
                    init_from=init_from, device=device)


@train_app.command("patch-encoder")
@user_errors
def train_patch_encoder(
    data: Path = typer.Option(..., help="MVTec-layout category folder (the one the patch run trained on)."),
    patch: Path = typer.Option(..., help="`train patch` run folder or checkpoint (a fixed snapshot: its G is frozen)."),
    out: Path = typer.Option(..., help="Run folder for the encoder."),
    steps: Optional[int] = typer.Option(None, help="Total steps (default 100000)."),
    minutes: Optional[float] = typer.Option(None, help="Wall-clock budget of this call."),
    batch: Optional[int] = typer.Option(None, help="Windows per step: half G samples, half real (default 32)."),
    seed: Optional[int] = typer.Option(None, help="Random seed (default 0)."),
    sample_every: Optional[int] = typer.Option(None, help="Steps between sample grids (default 200)."),
    ckpt_every: Optional[int] = typer.Option(None, help="Steps between checkpoints (default 200)."),
    resume: bool = typer.Option(False, help="Continue from the last checkpoint in --out."),
) -> None:
    """Train the encoder (window + mask -> w+) that starts a patch G's inversion; report vs the w_avg start."""
    from defectgen.training.patch_encoder import train_patch_encoder_cli

    train_patch_encoder_cli(data=data, patch=patch, out=out, resume=resume, steps=steps, minutes=minutes, batch=batch,
                            seed=seed, sample_every=sample_every, ckpt_every=ckpt_every)


@train_app.command("gan")
@user_errors
def train_gan(
    data: Path = typer.Option(..., help="MVTec-layout category folder."),
    out: Path = typer.Option(..., help="Run folder (checkpoints, logs, sample grids)."),
    res: int = typer.Option(64, help="Model resolution: 64, 128 or 256."),
    kimg: float = typer.Option(50.0, help="Training length in thousands of images shown to D."),
    batch: int = typer.Option(16, help="Batch size per process."),
    resume: bool = typer.Option(False, help="Continue from the last checkpoint in --out."),
    seed: int = typer.Option(0, help="Random seed."),
    dry_run: bool = typer.Option(False, help="Resolve and print the config, then stop."),
    r1_gamma: Optional[float] = typer.Option(None, help="R1 weight (default 0.1)."),
    augment: Optional[str] = typer.Option(None, help="DiffAugment ops: translation,flip,flipv,color ('' = none)."),
    defect_fraction: Optional[float] = typer.Option(
        None, help="Fraction of each defect type's images to train on (default 1.0 = all; rest held out)."),
    good_share: Optional[float] = typer.Option(None, help="Expected share of good images per batch (default 0.5)."),
    channel_max: Optional[int] = typer.Option(None, help="Widest layer of G and D (default 64; raise on a GPU)."),
    channel_base: Optional[int] = typer.Option(None, help="Channels at side r = min(base // r, max) (default 1024)."),
    sample_every: Optional[int] = typer.Option(None, help="Steps between sample grids (default 200)."),
    ckpt_every: Optional[int] = typer.Option(None, help="Steps between checkpoints (default 200)."),
    mask_seg: Optional[float] = typer.Option(
        None, help="Weight of the segmenter-guided mask loss (default 0 = off; see training/segmenter.py)."),
) -> None:
    """Whole-part alternative to `train patch`: a conditional image+mask StyleGAN2-lite G of the whole part.

    At 64 px on a CPU it draws blurry blobs: export it with --guide-weight 1 (benchmarks/results/retired_models.md).
    """
    from defectgen.training.gan import train_gan_cli

    train_gan_cli(data=data, out=out, res=res, kimg=kimg, batch=batch, resume=resume, seed=seed, dry_run=dry_run,
                  r1_gamma=r1_gamma, augment=augment, defect_fraction=defect_fraction, good_share=good_share,
                  channel_max=channel_max, channel_base=channel_base, sample_every=sample_every,
                  ckpt_every=ckpt_every, mask_seg=mask_seg)


@train_app.command("encoder")
@user_errors
def train_encoder(
    data: Path = typer.Option(..., help="MVTec-layout category folder."),
    gan: Path = typer.Option(..., help="GAN run folder or checkpoint."),
    out: Path = typer.Option(..., help="Run folder for the encoder."),
    steps: int = typer.Option(2000, help="Optimisation steps."),
    batch: int = typer.Option(16, help="Batch size per process."),
    vgg: Optional[Path] = typer.Option(None, help="Optional VGG16 weights (safetensors) for the feature loss."),
    resume: bool = typer.Option(False, help="Continue from the last checkpoint in --out."),
    seed: int = typer.Option(0, help="Random seed."),
    holdout: Optional[float] = typer.Option(None, help="Fraction of real images held out for report.json (0.1)."),
    sample_every: Optional[int] = typer.Option(None, help="Steps between sample grids (default 200)."),
    ckpt_every: Optional[int] = typer.Option(None, help="Steps between checkpoints (default 200)."),
    init_from: Optional[Path] = typer.Option(None, help="Encoder run or checkpoint to start from (E and D weights; "
                                                        "fresh optimisers)."),
    w_mask: Optional[float] = typer.Option(None, help="Weight of the mask BCE (default 0.5)."),
    dry_run: bool = typer.Option(False, help="Resolve and print the config, then stop."),
) -> None:
    """Train the idinvert domain-guided encoder (image + mask -> w+) of a whole-part `train gan` run."""
    from defectgen.training.encoder import train_encoder_cli

    train_encoder_cli(data=data, gan=gan, out=out, steps=steps, batch=batch, vgg=vgg, resume=resume, seed=seed,
                      holdout=holdout, sample_every=sample_every, ckpt_every=ckpt_every, dry_run=dry_run,
                      init_from=str(init_from) if init_from else None, w_mask=w_mask)


@app.command("export")
@user_errors
def export(
    out: Path = typer.Option(..., help="Bundle folder to write."),
    gan: Optional[Path] = typer.Option(None, help="GAN checkpoint (run folder or .safetensors); with --encoder."),
    encoder: Optional[Path] = typer.Option(None, help="Encoder checkpoint (run folder or .safetensors): with --gan; "
                                                      "with --patch a `train patch-encoder` run (optional)."),
    patch: Optional[Path] = typer.Option(None, help="Instead of --gan: a `train patch` run (layered patch G, "
                                                    "native-scale bank; without --encoder it starts from w_avg)."),
    data: Optional[Path] = typer.Option(None, help="Dataset for the defect bank (default: the one the model "
                                                   "trained on)."),
    spaces: str = typer.Option("wplus,w,z", help="Latent spaces to export step graphs for."),
    batch: str = typer.Option("1,4,8", help="Batch sizes of the step graphs."),
    opset: int = typer.Option(18, help="ONNX opset."),
    verify: bool = typer.Option(True, help="Check ONNX Runtime against torch and finite differences."),
    zip_: bool = typer.Option(False, "--zip", help="Also write BUNDLE.zip."),
    steps: Optional[int] = typer.Option(None, help="Recommended `run --steps`, stored in the manifest (default 10)."),
    guide_weight: Optional[float] = typer.Option(None, help="Recommended `run --guide-weight`, stored in the "
                                                            "manifest (default 0; 1 for a G that cannot draw "
                                                            "defects)."),
    mask_mode: Optional[str] = typer.Option(None, help="Recommended `run --mask-mode`, stored in the manifest "
                                                       "(default target; generated for a layered G, whose mask is "
                                                       "where it drew)."),
    mask_shape: Optional[str] = typer.Option(None, help="Recommended `run --mask-shape` for random targets, stored "
                                                        "in the manifest (default reference; generated: G proposes "
                                                        "the defect and its mask)."),
) -> None:
    """Export encoder, mapping, synthesis and the inversion step graphs (forward + backward) as an ONNX bundle.

    Either --patch [--encoder] (a layered patch model, docs/bundle.md), or --gan and --encoder (whole-part).
    """
    if (patch is not None and gan is not None) or (patch is None and (gan is None or encoder is None)):
        msg = "give either --patch RUN [--encoder] (a patch model) or --gan and --encoder (a whole-part model)"
        raise DefectgenError(msg)
    batches = [int(b) for b in _csv(batch) or []]
    if patch is not None:
        from defectgen.export.patch import export_patch_cli

        export_patch_cli(run=patch, out=out, data=data, spaces=_csv(spaces), batch=batches, opset=opset,
                         verify=verify, zip_=zip_, steps=steps, guide_weight=guide_weight, encoder=encoder,
                         mask_mode=mask_mode, mask_shape=mask_shape)
        return
    from defectgen.export.bundle import export_bundle_cli

    assert gan is not None and encoder is not None
    export_bundle_cli(gan=gan, encoder=encoder, out=out, data=data, spaces=_csv(spaces), batch=batches,
                      opset=opset, verify=verify, zip_=zip_, steps=steps, guide_weight=guide_weight,
                      mask_mode=mask_mode, mask_shape=mask_shape)


@app.command("run")
@user_errors
def run(
    out: Path = typer.Option(..., help="Output folder (MVTec layout + jobs.jsonl + contact_sheet.png)."),
    bundle: Optional[Path] = typer.Option(None, help="Bundle folder or .zip (default: the embedded one)."),
    images: Optional[Path] = typer.Option(None, help="Folder of good images."),
    mvtec: Optional[Path] = typer.Option(None, help="MVTec category folder (uses train/good and test/good)."),
    jobs: Optional[Path] = typer.Option(None, help="JSONL job list."),
    masks: Optional[Path] = typer.Option(None, help="Folder of target masks (same stems as the images)."),
    random_masks: Optional[int] = typer.Option(None, help="Draw N random masks per image instead of --masks."),
    types: Optional[str] = typer.Option(None, help="Defect types, comma separated (default: all in the bundle)."),
    space: Optional[str] = typer.Option(None, help="Latent space to optimise: wplus, w or z (default: the bundle's)."),
    steps: Optional[int] = typer.Option(None, help="Adam steps (default: the bundle's)."),
    lr: Optional[float] = typer.Option(None, help="Adam learning rate (default: the bundle's, which is smaller "
                                                  "for targets G proposed; given, it applies to every job)."),
    lambda_: Optional[list[str]] = typer.Option(None, "--lambda", help="Loss weight override, name=value."),
    init: Optional[str] = typer.Option(None, help="Latent init: encoder, wavg or random (default: the bundle's)."),
    backend: str = typer.Option("auto", help="auto, ort-cpu, ort-cuda, ort-trt or tensorrt."),
    shard: Optional[str] = typer.Option(None, help="k/n: run only jobs whose index % n == k (k = 0..n-1)."),
    seed: int = typer.Option(0, help="Seed for masks, references and random init."),
    batch: Optional[int] = typer.Option(None, help="Jobs per step call, an exported batch (default: the smallest "
                                                   "that holds the jobs of this shard, else the largest)."),
    mask_mode: Optional[str] = typer.Option(None, help="Output mask: target, or generated (G mask > 0.5 near the "
                                                       "target). Default: the bundle's."),
    retry_failed: bool = typer.Option(False, help="Rerun jobs that OUT/jobs.jsonl records as failed."),
    detail: Optional[bool] = typer.Option(None, "--detail/--no-detail",
                                          help="Add the detail above the model's resolution, from --detail-from "
                                               "(default: the bundle's, on)."),
    detail_from: Optional[str] = typer.Option(None, help="Source of that detail: reference (the real defect stitched "
                                                         "into the target, and the surface's grain) or surface (the "
                                                         "good image's grain only: every defect pixel above it is "
                                                         "the model's). Default: reference."),
    guide_weight: Optional[float] = typer.Option(None, help="Share 0..1 of the stitched real defect in the model "
                                                            "image: 0 = GAN alone, 1 = warped copy-paste "
                                                            "(default: the bundle's, 0)."),
    threads: Optional[int] = typer.Option(None, help="ONNX Runtime intra-op threads (default: physical cores)."),
    mask_shape: Optional[str] = typer.Option(None, help="Random masks: reference (the reference defect's real "
                                                        "mask, moved/mirrored/rescaled), procedural (the type's "
                                                        "shape family) or generated (G proposes the defect and its "
                                                        "mask). Default: the bundle's."),
    scale: Optional[str] = typer.Option(None, help="Patch-mode bundles: data px per model px of the window. "
                                                   "Default auto: the bundle's scale times how much larger each "
                                                   "image's part is than its training parts (recorded in "
                                                   "jobs.jsonl); a number overrides it."),
    variants: int = typer.Option(1, help="Generate K different defects for each target (different latent inits)."),
    proposals: Optional[int] = typer.Option(None, help="--mask-shape generated: latents G draws per target; its "
                                                       "discriminator keeps the most real whole defect (default "
                                                       "8; more is stricter and slower)."),
    min_change: Optional[float] = typer.Option(None, help="--mask-mode generated: label only the pixels G changes by "
                                                          "at least this many grey levels (0: G's whole mask; "
                                                          "default: the bundle's)."),
) -> None:
    """Generate defective images with exact masks (torch-free edge runtime). Rerun to resume.

    Exit codes: 0 all jobs ok; 1 some jobs failed (see OUT/jobs.jsonl); 2 bad options or input, nothing run.
    """
    from defectgen.runtime.commands.run import run_cli

    code = run_cli(out=out, bundle=bundle, images=images, mvtec=mvtec, jobs=jobs, masks=masks,
                   random_masks=random_masks, types=_csv(types), space=space, steps=steps, lr=lr,
                   lambdas=lambda_ or [], init=init, backend=backend, shard=shard, seed=seed, batch=batch,
                   mask_mode=mask_mode, retry_failed=retry_failed, detail=detail, guide_weight=guide_weight,
                   threads=threads, mask_shape=mask_shape, scale=scale, variants=variants, proposals=proposals,
                   min_change=min_change, detail_from=detail_from)
    raise typer.Exit(code)


@app.command("demo")
@user_errors
def demo(
    out: Path = typer.Option(Path("demo_out"), help="Where to write images, masks and the contact sheet."),
    seed: int = typer.Option(0, help="Seed."),
    bundle: Optional[Path] = typer.Option(None, help="Bundle to demo instead of the embedded default one."),
    backend: str = typer.Option("auto", help="auto, ort-cpu, ort-cuda, ort-trt or tensorrt."),
) -> None:
    """Generate a grid of every defect type on the shipped example parts with the embedded default bundle."""
    from defectgen.runtime.commands.run import demo_cli

    demo_cli(out=out, seed=seed, bundle=bundle, backend=backend)


@app.command("bench")
@user_errors
def bench(
    bundle: Optional[Path] = typer.Option(None, help="Bundle (default: the embedded one)."),
    batch: str = typer.Option("1,4,8", help="Batch sizes."),
    backend: str = typer.Option("auto", help="Backend to time."),
    quick: bool = typer.Option(False, help="Few repeats (smoke test)."),
    out: Optional[Path] = typer.Option(None, help="Write JSON results here."),
    profile: bool = typer.Option(False, help="Also print ONNX Runtime's per-op profile of the step graph (CPU)."),
    threads: Optional[int] = typer.Option(None, help="ONNX Runtime intra-op threads (default: physical cores)."),
) -> None:
    """Time the step graph and end-to-end defects/s with the runtime only (no torch needed)."""
    from defectgen.measure.bench import bench_cli

    bench_cli(bundle=bundle, batch=[int(b) for b in _csv(batch) or []], backend=backend, quick=quick, out=out,
              profile=profile, threads=threads)


@app.command("info")
@user_errors
def info(bundle: Optional[Path] = typer.Argument(None, help="Bundle folder or .zip (default: embedded).")) -> None:
    """Print a bundle's manifest summary, op histogram per graph and verify result."""
    from defectgen.runtime.commands.info import info_text

    typer.echo(info_text(bundle))


def main() -> None:  # pragma: no cover - console entry
    app(prog_name="defectgen")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
