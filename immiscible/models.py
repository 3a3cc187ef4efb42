"""Named diffusers ``UNet2DModel`` configurations, from a test-sized model to the paper's CIFAR-10 UNet.

``ddpm_cifar10`` is the DDPM CIFAR-10 network used by the paper's DDIM base code (ddpm-torch): 128 base channels,
multipliers [1, 2, 2, 2], two residual blocks per level, self-attention at 16x16, dropout 0.1 (35.7M parameters
at 32x32x3). The smaller ones drop attention and levels so that CPU runs fit in minutes.
"""
from __future__ import annotations

from diffusers import UNet2DModel

MODEL_CONFIGS: dict[str, dict] = {
    # 0.26M parameters: tests and the smoke profile.
    "tiny": dict(block_out_channels=(16, 32, 32), layers_per_block=1, norm_num_groups=8,
                 down_block_types=("DownBlock2D",) * 3, up_block_types=("UpBlock2D",) * 3, add_attention=False),
    # 1.05M parameters: the cpu profile (16x16 CIFAR-10 on 2 cores).
    "small": dict(block_out_channels=(32, 64, 64), layers_per_block=1, norm_num_groups=16,
                  down_block_types=("DownBlock2D",) * 3, up_block_types=("UpBlock2D",) * 3, add_attention=False),
    # 1.5M parameters, two blocks per level.
    "base": dict(block_out_channels=(32, 64, 64), layers_per_block=2, norm_num_groups=16,
                 down_block_types=("DownBlock2D",) * 3, up_block_types=("UpBlock2D",) * 3, add_attention=False),
    # 35.7M parameters: DDPM / ddpm-torch CIFAR-10 (paper profile).
    "ddpm_cifar10": dict(block_out_channels=(128, 256, 256, 256), layers_per_block=2, norm_num_groups=32,
                         down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                         up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
                         attention_head_dim=None, dropout=0.1),
}


def build_unet(name: str, sample_size: int, channels: int = 3, dropout: float | None = None,
               num_classes: int = 0) -> UNet2DModel:
    """A freshly initialised ``UNet2DModel`` of the named configuration for (channels, sample_size, sample_size);
    with ``num_classes`` > 0, class-conditional: a class embedding of ``num_classes`` + 1 entries, the last one the
    "null" class of classifier-free guidance."""
    if name not in MODEL_CONFIGS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODEL_CONFIGS)}")
    kwargs = dict(MODEL_CONFIGS[name])
    levels = len(kwargs["block_out_channels"])
    if sample_size % (2 ** (levels - 1)):
        raise ValueError(f"model {name!r} has {levels} levels, so the image size must be divisible by "
                         f"{2 ** (levels - 1)}; got {sample_size}. Pick another resolution or model.")
    if dropout is not None:
        kwargs["dropout"] = dropout
    if num_classes:
        kwargs["num_class_embeds"] = num_classes + 1
    return UNet2DModel(sample_size=sample_size, in_channels=channels, out_channels=channels, **kwargs)


def num_parameters(model) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
