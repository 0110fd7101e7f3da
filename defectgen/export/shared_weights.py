"""Bundle format 2: every graph's weights in one external-data file, each distinct tensor stored once.

Why: each step graph embeds G, D and (with an encoder) E, so a bundle with three latent spaces at three batch
sizes held the same weights nine times (105 MB for a 64 px model, over the package budget). The step graphs of
one space differ only in their batch dimension and share every initializer byte for byte; the synthesis graph
shares G's. ONNX's standard external-data mechanism (`data_location = EXTERNAL`, `location`, `offset`,
`length`) lets all graphs point into one `weights.bin`; ONNX Runtime and TensorRT's `parse_from_file` resolve it
relative to the graph file, so the runtime needs no code for it, and the manifest's sha256 covers the file.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import onnx
from onnx import numpy_helper

WEIGHTS_NAME = "weights.bin"
MIN_EXTERNAL_BYTES = 1024  # smaller tensors (scalars, shapes, axes) stay inline: TensorRT wants axes in the graph
ALIGN = 64  # offsets aligned for memory mapping


def _payload(t: onnx.TensorProto) -> bytes:
    return t.raw_data if t.HasField("raw_data") else numpy_helper.to_array(t).tobytes()


def share_weights(folder: Path, graphs: list[str], *, weights_name: str = WEIGHTS_NAME,
                  min_bytes: int = MIN_EXTERNAL_BYTES) -> dict[str, int]:
    """Move the initializers of `graphs` (files in `folder`) into one `weights_name`, deduplicated by content.

    Args:
        folder: the bundle folder being written.
        graphs: graph file names in `folder` (their own weights inline, as `export_graph` writes them).
        weights_name: the shared file.
        min_bytes: tensors smaller than this stay inside their graph.

    Returns:
        `{"tensors": references rewritten, "unique": tensors stored, "bytes": size of the weights file,
        "saved": bytes the deduplication saved}`.
    """
    stored: dict[tuple[str, int], tuple[int, int]] = {}  # (sha256, dtype) -> (offset, length)
    refs = saved = 0
    with (folder / weights_name).open("wb") as f:
        for name in graphs:
            model = onnx.load(str(folder / name), load_external_data=True)
            for t in model.graph.initializer:
                data = _payload(t)
                if len(data) < min_bytes:
                    continue
                key = (hashlib.sha256(data).hexdigest(), t.data_type)
                if key in stored:
                    saved += len(data)
                else:
                    f.write(b"\0" * (-f.tell() % ALIGN))
                    stored[key] = (f.tell(), len(data))
                    f.write(data)
                offset, length = stored[key]
                _point_to(t, weights_name, offset, length)
                refs += 1
            onnx.save_model(model, str(folder / name))
        size = f.tell()
    return {"tensors": refs, "unique": len(stored), "bytes": size, "saved": saved}


def _point_to(t: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    """Make `t` an external tensor at `location[offset:offset + length]` (its inline data dropped)."""
    for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
        t.ClearField(field)
    del t.external_data[:]
    t.data_location = onnx.TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = t.external_data.add()
        entry.key, entry.value = k, v
