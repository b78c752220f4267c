"""The registered supernet families, each a NetSpec table."""

from __future__ import annotations

import dataclasses

from enas4d.models.registry import register_supernet
from enas4d.models.spec import GroupSpec, NetSpec
from enas4d.models.supernet import MultiStageSupernet

G = GroupSpec

# MobileNetV3-style inverted residuals for 32x32 inputs (no squeeze-excite: its cross-channel
# gating would have to be made causal too; left out for now).
MBV3_CIFAR = NetSpec(
    block="mb", stem_stride=1, stem_act="hswish",
    groups=(G(16, 2, 1, "relu"), G(24, 3, 2, "relu"), G(40, 3, 2, "hswish"), G(80, 3, 2, "hswish")),
    width_mults=(0.5, 0.75, 1.0), kernels=(3, 5, 7), depths=(1, 2, 3), expands=(3, 4, 6),
    resolutions=(24, 28, 32), head_conv=256, head_act="hswish",
)

# CIFAR ResNet: the largest subnet has the shape of ResNet-20 (3 groups x 3 basic blocks,
# 16/32/64 channels), with 1x1 projection shortcuts where the width or stride changes.
RESNET_CIFAR = NetSpec(
    block="basic", stem_stride=1, stem_act="relu",
    groups=(G(16, 3, 1), G(32, 3, 2), G(64, 3, 2)),
    width_mults=(0.5, 0.75, 1.0), kernels=(3, 5), depths=(1, 2, 3), expands=None,
    resolutions=(24, 28, 32),
)

# The same reaching ResNet-56 (9 blocks per group).
RESNET56_CIFAR = NetSpec(
    block="basic", stem_stride=1, stem_act="relu",
    groups=(G(16, 9, 1), G(32, 9, 2), G(64, 9, 2)),
    width_mults=(0.5, 0.75, 1.0), kernels=(3, 5), depths=(3, 5, 7, 9), expands=None,
    resolutions=(24, 28, 32),
)

# Static (single-architecture) CIFAR networks: the yardsticks, and the starting points of the
# S2DNAS transform (enas4d.transform.from_static). With K = 1 they are plain networks.
RESNET20_STATIC = NetSpec(
    block="basic", stem_stride=1, stem_act="relu",
    groups=(G(16, 3, 1), G(32, 3, 2), G(64, 3, 2)),
    width_mults=(1.0,), kernels=(3,), depths=(3,), expands=None, resolutions=(32,),
)
RESNET56_STATIC = dataclasses.replace(RESNET20_STATIC, groups=(G(16, 9, 1), G(32, 9, 2), G(64, 9, 2)), depths=(9,))
MBV3_STATIC = dataclasses.replace(MBV3_CIFAR, width_mults=(1.0,), kernels=(5,), depths=(3,), expands=(6,),
                                  resolutions=(32,))

# The once-for-all MobileNetV3 shape at 224 (stem width tied to the first group's width).
MBV3_IMAGENET = NetSpec(
    block="mb", stem_stride=2, stem_act="hswish",
    groups=(G(24, 4, 2, "relu"), G(40, 4, 2, "relu"), G(80, 4, 2, "hswish"), G(112, 4, 1, "hswish"),
            G(160, 4, 2, "hswish")),
    width_mults=(1.0,), kernels=(3, 5, 7), depths=(2, 3, 4), expands=(3, 4, 6),
    resolutions=(128, 160, 192, 224), head_conv=960, head_hidden=1280, head_act="hswish",
)


@register_supernet
def mbv3_cifar(num_classes: int, num_stages: int, in_chans: int) -> MultiStageSupernet:
    """MobileNetV3-style multi-stage supernet for 32x32 images."""
    return MultiStageSupernet(MBV3_CIFAR, num_classes, num_stages, in_chans, name="mbv3_cifar")


@register_supernet
def resnet_cifar(num_classes: int, num_stages: int, in_chans: int) -> MultiStageSupernet:
    """Basic-block ResNet supernet whose largest subnet is ResNet-20 shaped."""
    return MultiStageSupernet(RESNET_CIFAR, num_classes, num_stages, in_chans, name="resnet_cifar")


@register_supernet
def resnet56_cifar(num_classes: int, num_stages: int, in_chans: int) -> MultiStageSupernet:
    """Basic-block ResNet supernet whose largest subnet is ResNet-56 shaped."""
    return MultiStageSupernet(RESNET56_CIFAR, num_classes, num_stages, in_chans, name="resnet56_cifar")


@register_supernet
def mbv3_imagenet(num_classes: int, num_stages: int, in_chans: int) -> MultiStageSupernet:
    """Once-for-all MobileNetV3-shaped multi-stage supernet for 224x224 images."""
    return MultiStageSupernet(MBV3_IMAGENET, num_classes, num_stages, in_chans, name="mbv3_imagenet")


@register_supernet
def resnet20_static(num_classes: int, num_stages: int, in_chans: int) -> MultiStageSupernet:
    """Plain CIFAR ResNet-20 (one architecture; K = 1 is the static network)."""
    return MultiStageSupernet(RESNET20_STATIC, num_classes, num_stages, in_chans, name="resnet20_static")


@register_supernet
def resnet56_static(num_classes: int, num_stages: int, in_chans: int) -> MultiStageSupernet:
    """Plain CIFAR ResNet-56 (one architecture; K = 1 is the static network)."""
    return MultiStageSupernet(RESNET56_STATIC, num_classes, num_stages, in_chans, name="resnet56_static")


@register_supernet
def mbv3_static(num_classes: int, num_stages: int, in_chans: int) -> MultiStageSupernet:
    """Plain MobileNetV3-style CIFAR network (5x5 depthwise, expand 6; one architecture)."""
    return MultiStageSupernet(MBV3_STATIC, num_classes, num_stages, in_chans, name="mbv3_static")
