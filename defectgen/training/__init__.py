"""Training (torch): GAN trainer, encoder trainer, checkpoints, DDP.

Public API (import from the submodules; this package imports nothing heavy on its own):

- `gan.train_gan(TrainGanConfig, out, *, g_cfg, d_cfg, resume, dry_run, device, progress) -> GanResult`
- `encoder.train_encoder(TrainEncoderConfig, out, *, resume, device, progress) -> EncoderResult`
- `checkpoint.load_generator(path, *, ema=True)`, `load_discriminator(path)`, `load_encoder(path)`,
  `defect_types(path)`, `read_checkpoint(path)`: path = run folder or `checkpoint.safetensors`
- `slim.export_slim(run, dst)` (`python -m defectgen.training.slim RUN DST`): nets-only copy for shipping
- `encoder.evaluate(E, G, held)`: held-out PSNR and mask IoU
- `patch_encoder.train_patch_encoder(TrainPatchEncoderConfig, out, *, resume, progress)`: the encoder that
  starts a patch G's inversion (held-out mask IoU against the w_avg start in its report)

A run folder holds `config.json`, `checkpoint.safetensors` (layout in checkpoint.py), `log.jsonl`,
`samples/NNNNNN.png`, `report.json` and `report.png`. Under `torchrun` every rank trains, rank 0 writes.
"""
