"""Tiny randomly initialised nets for export tests and benchmarks (no checkpoint needed).

The nets are the real `nets.stylegan` / `nets.encoder` architectures at the smallest size they allow, with the
parts that are zero at initialisation (noise strengths, encoder head, `w_avg`) set to random values, so every
branch of the objective and its gradient is exercised by a parity check.
"""

from __future__ import annotations

import torch
from torch import nn

from defectgen import DEFAULT_DEFECT_TYPES, GOOD
from defectgen.nets.encoder import Encoder, EncoderConfig
from defectgen.nets.stylegan import Discriminator, DiscriminatorConfig, Generator, GeneratorConfig

TINY_TYPES = [GOOD, *DEFAULT_DEFECT_TYPES]


def tiny_nets(res: int = 16, *, n_types: int = len(TINY_TYPES), w_dim: int = 16, channels: int = 16,
              seed: int = 0) -> tuple[nn.Module, nn.Module, nn.Module]:
    """Build `(G, E, D)` at toy size, frozen, with every path active.

    Args:
        res: resolution (16 is the nets' minimum).
        n_types: number of types including "good".
        w_dim: z and w size.
        channels: channel cap of every net.
        seed: torch seed of the weights.

    Returns:
        Generator, encoder, discriminator in eval mode with `requires_grad` off.
    """
    torch.manual_seed(seed)
    base = channels * res // 2  # channels_at(r) = min(base // r, channels): full width up to res/2
    gcfg = GeneratorConfig(res=res, z_dim=w_dim, w_dim=w_dim, n_types=n_types, mapping_layers=2,
                           channel_base=base, channel_max=channels)
    G = Generator(gcfg)
    D = Discriminator(DiscriminatorConfig(res=res, n_types=n_types, channel_base=base, channel_max=channels,
                                          feature_levels=(2, 4)))
    E = Encoder(EncoderConfig.from_generator(gcfg, channel_base=base, channel_max=channels))
    with torch.no_grad():
        G.mapping.w_avg.copy_(torch.randn_like(G.mapping.w_avg) * 0.3)
        for name, p in G.named_parameters():
            if name.endswith("noise.strength"):
                p.fill_(0.1)
        E.head.weight.normal_(0.0, 0.5)
        E.set_w_avg(G.mapping.w_avg)
    for net in (G, E, D):
        net.eval().requires_grad_(False)
    return G, E, D


def tiny_patch_nets(window: int = 16, *, n_defect_types: int = len(DEFAULT_DEFECT_TYPES), w_dim: int = 16,
                    channels: int = 8, seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """Build `(LayeredG, PatchDiscriminator)` at toy size, frozen, with a random `w_avg` per defect type.

    The generator is the layered patch G behind the objective's interface (`export/patch.py`): its types are
    `TINY_TYPES` ("good" + the defect types), its synthesis takes the good window.
    """
    from defectgen.export.patch import LayeredG
    from defectgen.nets.patch import (
        PatchDiscriminator,
        PatchDiscriminatorConfig,
        PatchGenerator,
        PatchGeneratorConfig,
    )

    torch.manual_seed(seed)
    base = channels * window // 2
    G = PatchGenerator(PatchGeneratorConfig(window=window, z_dim=w_dim, w_dim=w_dim, n_types=n_defect_types,
                                            mapping_layers=2, channel_base=base, channel_max=channels))
    D = PatchDiscriminator(PatchDiscriminatorConfig(res=window, n_types=n_defect_types, channel_base=base,
                                                    channel_max=channels))
    with torch.no_grad():
        G.mapping.w_avg.copy_(torch.randn_like(G.mapping.w_avg) * 0.3)
    for net in (G, D):
        net.eval().requires_grad_(False)
    return LayeredG(G).eval(), D
