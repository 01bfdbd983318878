"""Face embeddings from dlib's face recognition ResNet, run in PyTorch: aligned faces (N,3,H,W) -> (N,128).

The evaluate stage's recogniser for `identity` and `id_accuracy` (components/metrics/identity.py)
when no ArcFace weights are given, because its weights install with the project: dlib's
`dlib_face_recognition_resnet_model_v1.dat` (Davis King 2017, 99.38% on LFW), shipped in the
`face-recognition-models` package. The file is found in that package's folder, never by
importing it (its import needs pkg_resources, which current setuptools lacks). Licence: the
author released the model into the public domain (github.com/davisking/dlib-models). The same
package ships `shape_predictor_68_face_landmarks.dat`, whose training set's licence forbids
commercial use: nothing in this project reads it.

In: RGB faces in [0, 1], square, any size, aligned FFHQ-style (components/data/faces.py).
Out: float32 (N, 128) descriptors; dlib's rule: two faces show one person when their
descriptors are less than SAME_PERSON_DISTANCE = 0.6 apart (Euclidean).

The network is dlib's (dnn_face_recognition_ex.cpp: a 29-conv ResNet, 150 x 150 RGB chips in),
rebuilt layer for layer and loaded from dlib's file (components/metrics/dlib_weights.py), so it
runs batched in PyTorch: about 7 ms a face on one CPU core, where dlib's own CPU build (no
BLAS) takes about 70. Its descriptors equal dlib's `compute_face_descriptor(chip)` to 3e-7
(the tests compare them). The `dlib` package itself is not needed at run time, only the file.

Framing. dlib's network was trained on dlib's face chips (`dlib.get_face_chip`, padding 0.25:
its 5 landmarks warped to a fixed template). The faces here are already aligned, so no
landmarks are looked for: every face's chip is one fixed square of it, `CHIP_BOX`, the square
get_face_chip cuts from a face whose eye centres sit where the FFHQ template puts them (an eye
centre = the midpoint of dlib's two corner points of that eye): left 0.154, top 0.248, side
0.702 of the face, resized to 150 px (bilinear; antialiased first when shrinking). Evidence, on
the two real faces that install offline (scikit-image's astronaut, matplotlib's Grace Hopper)
aligned to the FFHQ template by hand and mirrored: dlib's own chips (its detector, then its
5-point predictor) span left 0.13-0.17, top 0.24-0.25, side 0.69-0.74 of the aligned face; the
fixed square's descriptors lie 0.12-0.19 from those of dlib's own chips, against 0.6 for
another person and 0.07-0.08 between dlib's chips of the photo and of its aligned crop.
Landmarks per image were not used: dlib's detector finds no face at 32 px, the 5-point
predictor given the whole crop as its box misplaces the landmarks (chips of side 0.93-1.02),
and a per-image alignment would mix alignment noise of the restored faces into the score.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from components.data.faces import FFHQ_TEMPLATE
from components.metrics.dlib_weights import DlibNet, Layer, read_dlib_net

NAME = "dlib_resnet_v1"
MODELS_PACKAGE = "face_recognition_models"
WEIGHTS_FILE = "dlib_face_recognition_resnet_model_v1.dat"
INSTALL = "pip install face-recognition-models==0.3.0"
CHIP_SIZE = 150  # dlib's input_rgb_image_sized<150>
CHIP_PADDING = 0.25  # dlib.get_face_chip's default
SAME_PERSON_DISTANCE = 0.6
EMBEDDING = 128
PIXEL_SCALE = 256.0  # dlib input layer: (pixel - mean) / 256, pixels 0-255
FACES_PER_PASS = 64  # bounds the activations' memory (about 45 MB at the stem)
# dlib get_face_chip_details, 5-point shapes: where the landmarks land in the chip before padding
# (outer and inner corner of the image-right eye, outer and inner corner of the image-left eye,
# the base of the nose).
DLIB_CHIP_LANDMARKS = np.array([(0.8595674595992, 0.2134981538014), (0.6460604764104, 0.2289674387677),
                                (0.1205750620789, 0.2137274526848), (0.3340850613712, 0.2290642403242),
                                (0.4901123135679, 0.6277975316475)])
# Residual blocks (width, whether it halves the resolution), dnn_face_recognition_ex.cpp's alevel4 .. alevel0.
BLOCKS = ((32, False),) * 3 + ((64, True),) + ((64, False),) * 3 + ((128, True),) + ((128, False),) * 2 \
    + ((256, True),) + ((256, False),) * 2 + ((256, True),)
STEM_WIDTH = 32

__all__ = ["DlibFaceNet", "chip_box", "default_weights", "face_chips"]


def chip_box() -> tuple[float, float, float]:
    """(left, top, side) of dlib's face chip in an FFHQ-aligned face, in units of the face's side."""
    chip = (DLIB_CHIP_LANDMARKS + CHIP_PADDING) / (1 + 2 * CHIP_PADDING)
    chip_eyes = np.stack([chip[2:4].mean(axis=0), chip[0:2].mean(axis=0)])  # image-left eye first
    face_eyes = FFHQ_TEMPLATE[:2]
    side = np.linalg.norm(face_eyes[1] - face_eyes[0]) / np.linalg.norm(chip_eyes[1] - chip_eyes[0])
    left, top = face_eyes.mean(axis=0) - chip_eyes.mean(axis=0) * side
    return float(left), float(top), float(side)


CHIP_BOX = chip_box()


def default_weights() -> Path:
    """dlib's face recognition weights in the installed face-recognition-models package."""
    spec = importlib.util.find_spec(MODELS_PACKAGE)  # not imported: its __init__ needs pkg_resources
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"identity needs dlib's {WEIGHTS_FILE}, from the package face-recognition-models, "
                                f"which is not installed: {INSTALL} (or give evaluate.learned.identity_net, "
                                f"or set evaluate.learned.dlib_identity: false)")
    path = Path(spec.submodule_search_locations[0]) / "models" / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"identity needs dlib's {path}, missing from the installed face-recognition-models: "
                                f"reinstall it ({INSTALL} --force-reinstall)")
    return path


def face_chips(faces: Tensor) -> Tensor:
    """(N, 3, 150, 150) in [0, 1]: CHIP_BOX of each square aligned face, resized to dlib's chip size."""
    if faces.ndim != 4 or faces.shape[1] != 3 or faces.shape[2] != faces.shape[3]:
        raise ValueError(f"dlib's face recogniser needs square RGB faces (N, 3, S, S), got {tuple(faces.shape)}")
    left, top, side = CHIP_BOX
    x = faces.float()
    if side * x.shape[-1] > CHIP_SIZE:  # shrinking: antialias first, so a 1024 px face does not alias
        size = round(CHIP_SIZE / side)
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    # affine_grid maps the chip's [-1, 1] onto the box, in the face's [-1, 1] (pixel edges, align_corners=False).
    theta = x.new_tensor([[side, 0.0, 2 * left + side - 1], [0.0, side, 2 * top + side - 1]])
    grid = F.affine_grid(theta.expand(len(x), 2, 3), [len(x), 3, CHIP_SIZE, CHIP_SIZE], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False).clamp(0, 1)


class Affine(nn.Module):
    """dlib's affine_ layer: a per-channel scale and shift (a BatchNorm folded after training)."""

    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer("gamma", torch.ones(channels))
        self.register_buffer("beta", torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma.view(1, -1, 1, 1) + self.beta.view(1, -1, 1, 1)


class ResidualBlock(nn.Module):
    """dlib's ares / ares_down: relu(BN(conv(relu(BN(conv(x))))) + shortcut); halving: the first conv has
    stride 2 and no padding and the shortcut is a 2x2 average pool."""

    def __init__(self, in_channels: int, channels: int, halves: bool):
        super().__init__()
        self.halves = halves
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=2 if halves else 1, padding=0 if halves else 1)
        self.affine1 = Affine(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.affine2 = Affine(channels)

    def forward(self, x: Tensor) -> Tensor:
        y = self.affine2(self.conv2(F.relu(self.affine1(self.conv1(x)))))
        return F.relu(add_zero_padded(y, F.avg_pool2d(x, 2) if self.halves else x))


def add_zero_padded(a: Tensor, b: Tensor) -> Tensor:
    """dlib's add_prev: a + b on the larger of their shapes, each read as 0 outside its own (a halving block's
    conv output is 3 x 3 where its pooled shortcut is 4 x 4, and has twice its channels)."""
    shape = [max(p, q) for p, q in zip(a.shape[1:], b.shape[1:])]
    return _pad_to(a, shape) + _pad_to(b, shape)


def _pad_to(x: Tensor, shape: list[int]) -> Tensor:
    channels, height, width = shape
    return F.pad(x, (0, width - x.shape[3], 0, height - x.shape[2], 0, channels - x.shape[1]))


class DlibFaceNet(nn.Module):
    """dlib's face recognition ResNet v1, frozen: [0, 1] aligned faces (N, 3, S, S) -> descriptors (N, 128)."""

    name = NAME
    distance = "euclidean"  # what id_accuracy ranks faces by: dlib's metric

    def __init__(self):
        super().__init__()
        self.register_buffer("mean_rgb", torch.zeros(3))
        self.conv = nn.Conv2d(3, STEM_WIDTH, 7, stride=2)
        self.affine = Affine(STEM_WIDTH)
        blocks, channels = [], STEM_WIDTH
        for width, halves in BLOCKS:
            blocks.append(ResidualBlock(channels, width, halves))
            channels = width
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(channels, EMBEDDING, bias=False)
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_file(cls, path: str | Path | None = None) -> DlibFaceNet:
        """The network with dlib's weights file `path` (None: the installed face-recognition-models' copy);
        FileNotFoundError / ValueError naming the file when it is absent or another network."""
        path = default_weights() if path is None else Path(path)
        net = cls()
        net.load_dlib(read_dlib_net(path), path)
        return net

    def train(self, mode: bool = True) -> DlibFaceNet:
        return super().train(False)  # frozen

    def forward(self, faces: Tensor) -> Tensor:
        device = self.fc.weight.device
        with torch.no_grad(), torch.autocast(device.type, enabled=False):
            chips = [face_chips(part.to(device)) for part in faces.split(FACES_PER_PASS)]
            return torch.cat([self.descriptors(part * 255) for part in chips])

    def descriptors(self, chips: Tensor) -> Tensor:
        """Descriptors of dlib face chips (N, 3, 150, 150) on dlib's 0-255 pixel scale, as compute_face_descriptor."""
        x = (chips.float() - self.mean_rgb.view(1, 3, 1, 1)) / PIXEL_SCALE
        x = F.max_pool2d(F.relu(self.affine(self.conv(x))), 3, stride=2)
        return self.fc(self.blocks(x).mean(dim=(2, 3)))

    def load_dlib(self, net: DlibNet, path: Path) -> None:
        """Copy `net`'s weights in, after checking its layers are this network's, kind for kind and shape for shape."""
        kinds = [layer.kind for layer in net.layers]
        if kinds != expected_layer_kinds() or net.input_size != (CHIP_SIZE, CHIP_SIZE):
            raise ValueError(f"{path} is not dlib's face recognition ResNet v1 ({WEIGHTS_FILE}): "
                             f"{len(kinds)} layers on a {net.input_size} input")
        _check_pools(net, path)
        convs = [layer for layer in net.layers if layer.kind == "con"]
        affines = [layer for layer in net.layers if layer.kind == "affine"]
        targets = [(self.conv, self.affine)] + [(getattr(block, f"conv{i}"), getattr(block, f"affine{i}"))
                                                for block in self.blocks for i in (1, 2)]
        for (conv, affine), conv_layer, affine_layer in zip(targets, convs, affines):
            _load_conv(conv, conv_layer, path)
            _copy(affine.gamma, affine_layer.arrays["gamma"], path)
            _copy(affine.beta, affine_layer.arrays["beta"], path)
        _copy(self.fc.weight, net.layers[-1].arrays["weight"].T, path)
        self.mean_rgb.copy_(torch.tensor(net.mean_rgb))


def expected_layer_kinds() -> list[str]:
    """dlib's layers of the network, from the input up (a halving block pools its shortcut before the add)."""
    kinds = ["con", "affine", "relu", "max_pool"]
    for _, halves in BLOCKS:
        kinds += ["con", "affine", "relu", "con", "affine", *(["avg_pool"] if halves else []), "add_prev", "relu"]
    return kinds + ["avg_pool", "fc"]


def _check_pools(net: DlibNet, path: Path) -> None:
    # (rows, cols, stride_y, stride_x, padding_y, padding_x): the stem's 3x3 / 2 max pool, the shortcuts'
    # 2x2 / 2 average pools, and the global average pool (dlib's avg_pool_everything: rows = cols = 0).
    expected = [(3, 3, 2, 2, 0, 0)] + [(2, 2, 2, 2, 0, 0)] * sum(halves for _, halves in BLOCKS) + [(0, 0, 1, 1, 0, 0)]
    found = [tuple(layer.settings.values()) for layer in net.layers if layer.kind.endswith("pool")]
    if found != expected:
        raise ValueError(f"{path}: pooling layers {found}, where dlib's face recognition ResNet has {expected}")


def _load_conv(conv: nn.Conv2d, layer: Layer, path: Path) -> None:
    geometry = ((layer.settings["stride_y"], layer.settings["stride_x"]),
                (layer.settings["padding_y"], layer.settings["padding_x"]))
    if geometry != (conv.stride, conv.padding) or "bias" not in layer.arrays:
        raise ValueError(f"{path}: a convolution of stride and padding {geometry}, where dlib's face recognition "
                         f"ResNet has {(conv.stride, conv.padding)} and a bias")
    _copy(conv.weight, layer.arrays["weight"], path)
    _copy(conv.bias, layer.arrays["bias"], path)


def _copy(target: Tensor, array: np.ndarray, path: Path) -> None:
    if tuple(array.shape) != tuple(target.shape):
        raise ValueError(f"{path}: a tensor of shape {tuple(array.shape)} where dlib's face recognition ResNet has "
                         f"{tuple(target.shape)}")
    target.copy_(torch.from_numpy(np.ascontiguousarray(array)))
