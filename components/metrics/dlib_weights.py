"""Reading a dlib DNN file (`dlib::serialize(net)`), here the face recognition ResNet's, into numpy arrays.

dlib writes a network outermost layer first: the loss layer's details, then one version
number per nested layer (tags and skips included), then the input layer, then each layer's
details from the input upwards, every one followed by three bools and the tensors of its
training state (empty in a released file). Layer details start with a name and version
("con_4", "affine_", "relu_", ...), so the reader checks each one against what it parses.
Formats, from dlib's dlib/serialize.h, dlib/cuda/tensor.h and dlib/dnn/{core,layers,input}.h:
- an integer: one byte, the count of bytes that follow (low 4 bits) and the sign (0x80), then
  the magnitude little-endian; a bool: the character '1' or '0'; a string: its length, then
  its bytes; a float: an integer mantissa and an integer exponent (mantissa * 2^exponent);
- a tensor: version 2, four dimensions (samples, k, rows, cols), then little-endian float32s;
  an alias (where a layer's weights sit in its one `params` tensor): version 1, 4 dimensions.

Only the layer kinds the face recognition network uses are read; anything else is a
ValueError naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

INPUT_LAYER = "input_rgb_image_sized"
# dlib float_details: exponents that stand for +inf, -inf and NaN.
SPECIAL_EXPONENTS = {32000: float("inf"), 32001: float("-inf"), 32002: float("nan")}
MAX_NESTING = 10_000  # version numbers before the input layer; more means a file of something else
MAX_NAME = 64  # every string in a DNN file is a layer name ("input_rgb_image_sized" the longest)


@dataclass
class Layer:
    kind: str  # con, affine, relu, max_pool, avg_pool, add_prev, fc
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    settings: dict[str, int] = field(default_factory=dict)


@dataclass
class DlibNet:
    mean_rgb: tuple[float, float, float]  # the input layer's avg_red, avg_green, avg_blue (0-255 scale)
    input_size: tuple[int, int]
    layers: list[Layer]  # from the input upwards; tags and skips leave no layer


class _Stream:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def integer(self) -> int:
        head = self.data[self.pos]
        size = head & 0x0F
        if self.pos + 1 + size > len(self.data):
            raise ValueError("the file ends inside a number")
        value = int.from_bytes(self.data[self.pos + 1:self.pos + 1 + size], "little")
        self.pos += 1 + size
        return -value if head & 0x80 else value

    def string(self) -> str:
        length = self.integer()
        if not 0 <= length <= MAX_NAME:
            raise ValueError(f"expected a layer name at byte {self.pos}, found a string of {length} bytes")
        text = self.data[self.pos:self.pos + length].decode("latin-1")
        self.pos += length
        return text

    def peek_string(self) -> str | None:
        start = self.pos
        try:
            return self.string()
        except (IndexError, ValueError):
            return None
        finally:
            self.pos = start

    def flag(self) -> bool:
        char = self.data[self.pos:self.pos + 1]
        if char not in (b"0", b"1"):
            raise ValueError(f"expected a bool ('0' or '1') at byte {self.pos}, found {char!r}")
        self.pos += 1
        return char == b"1"

    def real(self) -> float:
        mantissa, exponent = self.integer(), self.integer()
        return SPECIAL_EXPONENTS.get(exponent, mantissa * 2.0 ** exponent)

    def tensor(self) -> np.ndarray:
        self.expect(self.integer(), 2, "tensor version")
        shape = tuple(self.integer() for _ in range(4))
        count = int(np.prod(shape))
        if self.pos + 4 * count > len(self.data):
            raise ValueError(f"a tensor of shape {shape} runs past the end of the file")
        array = np.frombuffer(self.data, "<f4", count=count, offset=self.pos).reshape(shape).copy()
        self.pos += 4 * count
        return array

    def alias(self) -> tuple[int, ...]:
        self.expect(self.integer(), 1, "alias_tensor version")
        return tuple(self.integer() for _ in range(4))

    def at_end(self) -> bool:
        return self.pos >= len(self.data)

    @staticmethod
    def expect(found, wanted, what: str) -> None:
        if found != wanted:
            raise ValueError(f"{what}: expected {wanted!r}, found {found!r}")


def read_dlib_net(path: str | Path) -> DlibNet:
    """The layers of the dlib DNN file `path`; FileNotFoundError / ValueError naming it when it is
    absent or not a network of the layer kinds read here."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dlib network file {path} does not exist")
    try:
        return _read(_Stream(path.read_bytes()))
    except (IndexError, ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not a dlib network file this reader knows: {err}") from err


def _read(stream: _Stream) -> DlibNet:
    stream.expect(stream.integer(), 1, "loss layer version")
    _read_loss(stream)
    versions = _read_versions(stream)
    mean_rgb, size = _read_input(stream)
    layers = []
    while not stream.at_end():
        layers.append(_read_layer(stream))
        _skip_training_state(stream, bottom=len(layers) == 1, bottom_version=versions[-1])
    return DlibNet(mean_rgb, size, layers)


def _read_loss(stream: _Stream) -> None:
    name = stream.string()
    if name == "loss_metric_2":
        stream.real(), stream.real()  # margin and distance threshold: training settings
    elif name != "loss_metric_":
        raise ValueError(f"expected dlib's metric loss (loss_metric_), found {name!r}")


def _read_versions(stream: _Stream) -> list[int]:
    versions = []
    while stream.peek_string() != INPUT_LAYER:
        if len(versions) >= MAX_NESTING:
            raise ValueError(f"no {INPUT_LAYER} layer found")
        versions.append(stream.integer())
    return versions


def _read_input(stream: _Stream) -> tuple[tuple[float, float, float], tuple[int, int]]:
    stream.string()
    mean_rgb = (stream.real(), stream.real(), stream.real())
    return mean_rgb, (stream.integer(), stream.integer())


def _skip_training_state(stream: _Stream, bottom: bool, bottom_version: int) -> None:
    """What add_layer writes after a layer's details: three flags, x_grad, cached_output, then
    grad_final (+ a sample expansion factor, version 3) for the layer on the input, else
    params_grad (absent in add_layer version 1: the next layer's name follows instead)."""
    for _ in range(3):
        stream.flag()
    stream.tensor(), stream.tensor()
    if bottom:
        stream.tensor()
        if bottom_version >= 3:
            stream.integer()
    elif not stream.at_end() and stream.data[stream.pos:stream.pos + 2] == b"\x01\x02":
        stream.tensor()  # a tensor starts with version 2; a layer name's length is never 2


def _read_layer(stream: _Stream) -> Layer:
    name = stream.string()
    for prefix, reader in _READERS.items():
        if name.startswith(prefix):
            return reader(stream, name)
    raise ValueError(f"a layer of kind {name!r}, which this reader does not know")


def _read_con(stream: _Stream, name: str) -> Layer:
    if name not in ("con_4", "con_5", "con_6"):
        raise ValueError(f"unknown convolution version {name!r}")
    params = stream.tensor().reshape(-1)
    settings = {key: stream.integer() for key in ("filters", "rows", "cols", "stride_y", "stride_x",
                                                   "padding_y", "padding_x")}
    filters, biases = stream.alias(), stream.alias()
    for _ in range(4):  # learning-rate and weight-decay multipliers: training settings
        stream.real()
    use_bias = stream.flag() if name in ("con_5", "con_6") else True
    if name == "con_6":
        stream.flag()  # use_relu: a fused ReLU only in the CUDA path; dlib writes its own relu_ layer
    weight_count = int(np.prod(filters))
    arrays = {"weight": params[:weight_count].reshape(filters)}
    if use_bias:
        arrays["bias"] = params[weight_count:weight_count + int(np.prod(biases))]
    return Layer("con", arrays, settings)


def _read_affine(stream: _Stream, name: str) -> Layer:
    if name not in ("affine_", "affine_2"):
        raise ValueError(f"unknown affine version {name!r} (a bn_ layer is not read here)")
    params = stream.tensor().reshape(-1)
    gamma, beta = stream.alias(), stream.alias()
    mode = stream.integer()
    if name == "affine_2" and stream.flag():
        raise ValueError("a disabled affine layer")
    count = int(np.prod(gamma))
    if int(np.prod(beta)) != count or params.size != 2 * count:
        raise ValueError(f"an affine layer with gamma {gamma}, beta {beta} in {params.size} params")
    return Layer("affine", {"gamma": params[:count], "beta": params[count:]}, {"mode": mode})


def _read_relu(stream: _Stream, name: str) -> Layer:
    if name == "relu_2" and stream.flag():
        raise ValueError("a disabled relu layer")
    return Layer("relu")


def _read_pool(stream: _Stream, name: str) -> Layer:
    if name not in ("max_pool_2", "avg_pool_2"):
        raise ValueError(f"unknown pooling version {name!r}")
    settings = {key: stream.integer() for key in ("rows", "cols", "stride_y", "stride_x", "padding_y", "padding_x")}
    return Layer(name.removesuffix("_2"), settings=settings)


def _read_add_prev(stream: _Stream, name: str) -> Layer:
    return Layer("add_prev")


def _read_fc(stream: _Stream, name: str) -> Layer:
    if name not in ("fc_2", "fc_3"):
        raise ValueError(f"unknown fully connected version {name!r}")
    outputs, inputs = stream.integer(), stream.integer()
    params = stream.tensor().reshape(-1)
    weights, _ = stream.alias(), stream.alias()
    bias_mode = stream.integer()
    for _ in range(4):
        stream.real()
    if name == "fc_3":
        stream.flag()
    if bias_mode != 1:  # dlib FC_NO_BIAS; the face recognition network's fc_no_bias
        raise ValueError("a fully connected layer with a bias")
    weight = params[:int(np.prod(weights))].reshape(inputs, outputs)  # dlib: out = in x W
    return Layer("fc", {"weight": weight}, {"inputs": inputs, "outputs": outputs})


_READERS = {"con_": _read_con, "affine_": _read_affine, "relu_": _read_relu, "max_pool_": _read_pool,
            "avg_pool_": _read_pool, "add_prev": _read_add_prev, "fc_": _read_fc}
