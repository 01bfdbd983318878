"""The texture-structure fusion inpainting generator of edge-guided face inpainting, stage 2.

Liu, Wei, Deng 2022, stage 2, built from EdgeConnect, RDN and CBAM (each cited, with the
departures, in docs/methods.md, section "fusion_inpaint"). `FusionGenerator`: texture and
structure encoders, gated fusion at three scales, dense residual blocks with CBAM, a decoder
with U-Net skips. forward(image (N, 3, H, W), edges (N, 1, H, W), mask (N, 1, H, W)) ->
(N, 3, H, W) in [0, 1], the image's known pixels exactly; H and W divisible by 4.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from components.networks.blocks import CBAMChannelAttention, CBAMSpatialAttention, init_normal_
from components.networks.inputs import fill_holes

TEXTURE_CHANNELS = 4  # hole-filled RGB + mask
STRUCTURE_CHANNELS = 2  # edge map + mask
OUT_CHANNELS = 3
MIDDLE_DILATION = 2  # EdgeConnect ResnetBlock(256, 2)
DOWNSAMPLING = 4  # two stride-2 convs
# The filled input's logit is taken of values clamped to [eps, 1 - eps], so 0 and 1 stay finite;
# 1e-3 is within a quarter of an 8-bit level of both ends.
LOGIT_EPS = 1e-3


def norm_relu(channels: int) -> list[nn.Module]:
    return [nn.InstanceNorm2d(channels, track_running_stats=False), nn.ReLU()]


class Encoder(nn.Module):
    """EdgeConnect's encoder, keeping each scale: 7x7 conv -> w, 4x4/2 -> 2w, 4x4/2 -> 4w."""

    def __init__(self, in_channels: int, width: int):
        super().__init__()
        self.stages = nn.ModuleList([
            nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(in_channels, width, 7), *norm_relu(width)),
            nn.Sequential(nn.Conv2d(width, 2 * width, 4, stride=2, padding=1), *norm_relu(2 * width)),
            nn.Sequential(nn.Conv2d(2 * width, 4 * width, 4, stride=2, padding=1), *norm_relu(4 * width)),
        ])

    def forward(self, x: Tensor) -> list[Tensor]:
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


class TextureStructureFusion(nn.Module):
    """Each branch gated by the other (sigmoid of a 3x3 conv on both), then a 1x1 conv merging the pair.

    (N, C, H, W) texture and structure -> (N, C, H, W) fused.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.texture_gate = nn.Conv2d(2 * channels, channels, 3, padding=1)
        self.structure_gate = nn.Conv2d(2 * channels, channels, 3, padding=1)
        self.merge = nn.Sequential(nn.Conv2d(2 * channels, channels, 1), nn.ReLU())

    def forward(self, texture: Tensor, structure: Tensor) -> Tensor:
        both = torch.cat([texture, structure], dim=1)
        texture_in = texture + torch.sigmoid(self.texture_gate(both)) * structure
        structure_in = structure + torch.sigmoid(self.structure_gate(both)) * texture
        return self.merge(torch.cat([texture_in, structure_in], dim=1))


class DenseResidualBlock(nn.Module):
    """RDN's residual dense block with CBAM before the local residual.

    Layer i sees the block input and every earlier layer's output (channels + i * growth), adds
    `growth` channels; a 1x1 conv fuses them back to `channels`; channel then spatial attention;
    plus the input. (N, C, H, W) -> (N, C, H, W).
    """

    def __init__(self, channels: int, growth: int, layers: int, reduction: int):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Sequential(nn.Conv2d(channels + i * growth, growth, 3, padding=MIDDLE_DILATION,
                                    dilation=MIDDLE_DILATION), nn.ReLU())
            for i in range(layers))
        self.fuse = nn.Conv2d(channels + layers * growth, channels, 1)
        self.attention = nn.Sequential(CBAMChannelAttention(channels, reduction), CBAMSpatialAttention())

    def forward(self, x: Tensor) -> Tensor:
        features = [x]
        for layer in self.layers:
            features.append(layer(torch.cat(features, dim=1)))
        return x + self.attention(self.fuse(torch.cat(features, dim=1)))


class DenseResidualMiddle(nn.Module):
    """RDN's body: dense residual blocks, global feature fusion of every block's output, global residual."""

    def __init__(self, channels: int, blocks: int, growth: int, layers: int, reduction: int):
        super().__init__()
        self.blocks = nn.ModuleList(DenseResidualBlock(channels, growth, layers, reduction) for _ in range(blocks))
        self.global_fusion = nn.Sequential(nn.Conv2d(blocks * channels, channels, 1),
                                           nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, x: Tensor) -> Tensor:
        outputs, h = [], x
        for block in self.blocks:
            h = block(h)
            outputs.append(h)
        return x + self.global_fusion(torch.cat(outputs, dim=1))


class Up(nn.Module):
    """EdgeConnect's 4x4/2 transposed conv, then the fused encoder skip: concat, 3x3 conv, IN, ReLU."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.up = nn.Sequential(nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1), *norm_relu(c_out))
        self.merge = nn.Sequential(nn.Conv2d(2 * c_out, c_out, 3, padding=1), *norm_relu(c_out))

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.merge(torch.cat([self.up(x), skip], dim=1))


class FusionGenerator(nn.Module):
    """Texture-structure fusion inpainting generator with dense residual blocks and CBAM attention.

    Args:
        width: channels at full resolution (w, 2w, 4w over the three scales); EdgeConnect 64.
        residual_blocks: dense residual blocks at 4w; EdgeConnect 8.
        dense_layers: convs per dense block; growth: channels each adds (RDN's G).
        attention_reduction: CBAM channel-attention reduction ratio; 16.

    forward(image (N, 3, H, W), edges (N, 1, H, W), mask (N, 1, H, W)) -> (N, 3, H, W) in [0, 1],
    H and W divisible by 4: the image's known pixels exactly, the prediction in the holes. Pixels
    under the mask never reach the network, whatever the caller passes there.
    """

    def __init__(self, width: int = 64, residual_blocks: int = 8, dense_layers: int = 4, growth: int = 64,
                 attention_reduction: int = 16):
        super().__init__()
        widths = (width, 2 * width, 4 * width)
        self.texture = Encoder(TEXTURE_CHANNELS, width)
        self.structure = Encoder(STRUCTURE_CHANNELS, width)
        self.fusions = nn.ModuleList(TextureStructureFusion(c) for c in widths)
        self.middle = DenseResidualMiddle(widths[2], residual_blocks, growth, dense_layers, attention_reduction)
        self.ups = nn.ModuleList([Up(widths[2], widths[1]), Up(widths[1], widths[0])])
        self.head = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(width, OUT_CHANNELS, 7))
        init_normal_(self)
        nn.init.zeros_(self.head[1].weight)  # the untrained generator returns its hole-filled input

    def forward(self, image: Tensor, edges: Tensor, mask: Tensor) -> Tensor:
        n, _, h, w = image.shape
        if image.shape[1] != 3 or edges.shape != (n, 1, h, w) or mask.shape != (n, 1, h, w) \
                or h % DOWNSAMPLING or w % DOWNSAMPLING:
            raise ValueError(f"FusionGenerator needs image (N, 3, H, W), edges and mask (N, 1, H, W), H and W "
                             f"divisible by {DOWNSAMPLING}; got {tuple(image.shape)}, {tuple(edges.shape)}, "
                             f"{tuple(mask.shape)}")
        mask = mask.to(image.dtype)
        filled = fill_holes(image, mask)
        textures = self.texture(torch.cat([filled, mask], dim=1))
        structures = self.structure(torch.cat([edges.to(image.dtype), mask], dim=1))
        fused = [fusion(t, s) for fusion, t, s in zip(self.fusions, textures, structures)]
        x = self.middle(fused[2])
        x = self.ups[0](x, fused[1])
        x = self.ups[1](x, fused[0])
        # EdgeConnect's (tanh(y) + 1) / 2 is sigmoid(2 y); its argument is offset by the filled input's logit.
        holes = torch.sigmoid(2.0 * self.head(x) + torch.logit(filled, eps=LOGIT_EPS))
        return filled + mask * (holes - filled)
