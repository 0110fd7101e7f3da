"""A VGG16 feature trunk (up to relu4_3, as idinvert's perceptual loss) loading user-supplied safetensors.

We ship no VGG weights and use no torchvision: `--vgg PATH` takes a safetensors file with torchvision's key
names (`features.<i>.weight` / `features.<i>.bias`, or the same without `features.`), e.g. made once with
`safetensors.torch.save_file({k: v for k, v in torchvision.models.vgg16(weights="DEFAULT").state_dict().items()
if k.startswith("features.")}, "vgg16.safetensors")`.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from defectgen.errors import DataError


class VGG16Features(torch.nn.Module):
    """conv1_1 .. relu4_3 of VGG16 (torchvision layer indices 0..22), frozen; input images in [-1, 1]."""

    # channels per conv, "M" = 2x2 max pool; the first 10 convs of VGG16 (through conv4_3)
    LAYERS = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512)

    def __init__(self) -> None:
        super().__init__()
        self.convs = torch.nn.ModuleDict()
        self.plan: list[str] = []  # torchvision index (as str) of each conv, or "M"
        cin, idx = 3, 0
        for v in self.LAYERS:
            if v == "M":
                self.plan.append("M")
                idx += 1
                continue
            self.convs[str(idx)] = torch.nn.Conv2d(cin, int(v), 3, padding=1)
            self.plan.append(str(idx))
            cin, idx = int(v), idx + 2  # conv + relu
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = ((x + 1) / 2 - self.mean) / self.std  # ImageNet normalisation of [0, 1] RGB
        for p in self.plan:
            x = F.max_pool2d(x, 2) if p == "M" else F.relu(self.convs[p](x))
        return x

    @classmethod
    def from_safetensors(cls, path: str | os.PathLike[str]) -> VGG16Features:
        """Load torchvision-named VGG16 weights; `DataError` naming the file and the first missing key."""
        path = Path(path)
        if not path.is_file():
            msg = f"VGG16 weights not found: {path}"
            raise DataError(msg)
        try:
            sd = load_file(str(path))
        except Exception as e:  # safetensors raises its own error types for corrupt headers
            msg = f"not a readable safetensors file ({e}): {path}"
            raise DataError(msg) from None
        sd = {k.removeprefix("features."): v for k, v in sd.items()}
        net = cls()
        own = {f"{i}.{n}": t for i, conv in net.convs.items() for n, t in conv.state_dict().items()}
        missing = sorted(k for k in own if k not in sd)
        if missing:
            msg = f"VGG16 weights lack {missing[0]} (+{len(missing) - 1} more; want torchvision key names): {path}"
            raise DataError(msg)
        for k, t in own.items():
            if sd[k].shape != t.shape:
                msg = f"VGG16 weight {k} has shape {list(sd[k].shape)}, expected {list(t.shape)}: {path}"
                raise DataError(msg)
            t.copy_(sd[k])
        return net
