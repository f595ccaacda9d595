"""Static int8 for OpenVINO's CPU runtime: activation ranges observed on PyTorch calls, FakeQuantize in the trace.

OpenVINO runs a convolution or matrix multiplication in int8 when its inputs arrive through
``FakeQuantize`` nodes (its low-precision transformations turn them into u8 x i8 kernels, VNNI where the
CPU has it); its PyTorch front end turns ``torch.fake_quantize_per_tensor_affine`` and
``torch.fake_quantize_per_channel_affine`` into exactly those nodes. So:

- `RangeObserver` records the least and greatest input of every ``Conv2d`` and ``Linear`` of a module
  (forward pre-hooks, removed by `RangeObserver.close`) while PyTorch answers the calls that calibrate;
- `fake_quantized` swaps those layers for `_FakeQuantized` stand-ins (activations u8 per tensor, from the
  observed range; weights i8 per output channel, symmetric) for as long as ``convert_model`` traces, and
  puts the original layers back whatever happens. The PyTorch module is never left changed.

On CPUs without VNNI (AVX2, AVX-512 without VNNI), oneDNN multiplies u8 by i8 with ``vpmaddubsw``, which adds
two products into a saturating int16: 255 x 127 x 2 overflows it. There the weights get 7 bits (`weight_bits`),
as NNCF's "overflow fix" does: 255 x 63 x 2 fits.

OpenVINO's own route to this is NNCF (a separate, large package, with its own PyTorch tracing); these
are the same FakeQuantize nodes, placed by sdopt where it observed the ranges.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from sdopt.optimizations._snr import snr_db
from sdopt.verification import verifying

_LAYERS = (torch.nn.Conv2d, torch.nn.Linear)
MIN_ELEMENTS_PER_CHANNEL = 64
"""Layers whose input has fewer values per input channel (a timestep embedding's 2 rows) stay float."""


def weight_bits(int8_accelerated: bool) -> int:
    """The weight width that int8 kernels compute exactly: 8 bits with VNNI/AMX (32-bit accumulation), 7 bits
    without (``vpmaddubsw``'s int16 sums would saturate at 8).

    Example:
        >>> weight_bits(True), weight_bits(False)
        (8, 7)
    """
    return 8 if int8_accelerated else 7


class RangeObserver:
    """The least and greatest input seen by each convolution and linear layer of ``module``, except
    those under the top-level children named in ``keep_float``. Observes until `close`.

    Example:
        >>> import torch
        >>> layer = torch.nn.Sequential(torch.nn.Linear(2, 2))
        >>> observer = RangeObserver(layer, keep_float=())
        >>> _ = layer(torch.linspace(-1.0, 3.0, 128).reshape(64, 2))  # 64 rows: enough to be worth int8
        >>> observer.close(); observer.ranges
        {'0': (-1.0, 3.0)}
    """

    def __init__(self, module: torch.nn.Module, keep_float: Sequence[str]) -> None:
        self.ranges: dict[str, tuple[float, float]] = {}
        self._handles = [
            layer.register_forward_pre_hook(self._hook(name), with_kwargs=True)
            for name, layer in quantizable(module, keep_float)
        ]

    def _hook(self, name: str) -> Any:
        def observe(layer: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            tensor = _input_of(args, kwargs)
            if tensor is None or tensor.dim() < 2:  # never an error in the caller's call: that layer stays float
                return
            if verifying():  # sdopt's own made-up call (placeholder prompt and size) says nothing of the app's
                return
            tensor = tensor.detach()
            if tensor.numel() < MIN_ELEMENTS_PER_CHANNEL * tensor.shape[1 if tensor.dim() == 4 else -1]:
                return  # a product this small (an embedding's projection) costs more quantized than it saves
            low, high = torch.aminmax(tensor.float())
            seen = self.ranges.get(name)
            low_value, high_value = float(low), float(high)
            if seen is not None:
                low_value, high_value = min(seen[0], low_value), max(seen[1], high_value)
            self.ranges[name] = (low_value, high_value)

        return observe

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def quantizable(module: torch.nn.Module, keep_float: Sequence[str]) -> list[tuple[str, torch.nn.Module]]:
    """The ``(name, layer)`` of every convolution and linear of ``module`` that int8 may take: 2-D
    convolutions without groups and linear layers, outside the top-level children in ``keep_float``."""
    kept = tuple(keep_float)
    found: list[tuple[str, torch.nn.Module]] = []
    for name, layer in module.named_modules():
        if name.split(".", 1)[0] in kept or not isinstance(layer, _LAYERS):
            continue
        if isinstance(layer, torch.nn.Conv2d) and (layer.groups != 1 or layer.padding_mode != "zeros"):
            continue
        found.append((name, layer))
    return found


class _FakeQuantized(torch.nn.Module):
    """A convolution or linear layer as OpenVINO's int8 kernels compute it: the input rounded to 256
    levels over its observed range (u8), the weights to 255 levels per output channel (i8, symmetric; 127
    levels at ``bits=7``), the product in float32, the result in the layer's dtype."""

    def __init__(self, layer: torch.nn.Conv2d | torch.nn.Linear, low: float, high: float, bits: int = 8) -> None:
        super().__init__()
        self.layer = layer
        low, high = min(low, 0.0), max(high, 0.0)  # zero must be exact (padding, ReLU-like zeros)
        self.scale = max((high - low) / 255.0, 1e-8)
        self.zero_point = min(255, max(0, round(-low / self.scale)))
        weight = layer.weight.detach()
        largest = weight.abs().amax(dim=tuple(range(1, weight.dim()))).float()
        # Buffers, so the trace takes them as constants; the weights themselves stay the layer's (shared
        # with OpenVINO where `_openvino_program.shareable` allows, never copied here).
        self.weight_scales: torch.Tensor
        self.weight_zeros: torch.Tensor
        self.weight_max = 2 ** (bits - 1) - 1
        self.register_buffer("weight_scales", (largest / self.weight_max).clamp(min=1e-8), persistent=False)
        self.register_buffer("weight_zeros", torch.zeros(largest.shape, dtype=torch.int32), persistent=False)

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 - torch's name: callers pass input=
        dtype = input.dtype
        rounded = torch.fake_quantize_per_tensor_affine(input.float(), self.scale, self.zero_point, 0, 255)
        layer = self.layer
        weight = torch.fake_quantize_per_channel_affine(
            layer.weight.float(), self.weight_scales, self.weight_zeros, 0, -self.weight_max - 1, self.weight_max
        )
        bias = None if layer.bias is None else layer.bias.float()
        if isinstance(layer, torch.nn.Conv2d):
            result = layer._conv_forward(rounded, weight, bias)
        else:
            result = F.linear(rounded, weight, bias)
        return result.to(dtype)


@contextlib.contextmanager
def fake_quantized(
    module: torch.nn.Module, ranges: dict[str, tuple[float, float]], weight_bits: int = 8
) -> Iterator[int]:
    """Within the block, the layers named in ``ranges`` are `_FakeQuantized` stand-ins (weights in
    ``weight_bits``); yields how many.
    The original layers are back on exit, raised or not.

    Example:
        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Linear(2, 2))
        >>> with fake_quantized(model, {"0": (-1.0, 1.0)}) as count:
        ...     swapped = type(model[0]).__name__
        >>> count, swapped, type(model[0]).__name__
        (1, '_FakeQuantized', 'Linear')
    """
    swapped: list[tuple[torch.nn.Module, str, torch.nn.Module]] = []
    try:
        for name, (low, high) in ranges.items():
            parent_name, _, child = name.rpartition(".")
            parent = module.get_submodule(parent_name) if parent_name else module
            layer = parent.get_submodule(child)
            assert isinstance(layer, _LAYERS), f"{name} is a {type(layer).__name__}, not a convolution or linear"
            stand_in = _FakeQuantized(layer, low, high, weight_bits)
            parent._modules[child] = stand_in
            swapped.append((parent, child, layer))
        yield len(swapped)
    finally:
        for parent, child, layer in reversed(swapped):
            parent._modules[child] = layer


def layer_snr_db(
    module: torch.nn.Module,
    call: Callable[[], Any],
    ranges: dict[str, tuple[float, float]],
    weight_bits: int = 8,
) -> dict[str, float]:
    """Each layer named in ``ranges``: the SNR in dB of its fake-quantized output against its exact one, during
    ``call`` (which runs ``module``; each layer's worst over the call). The layers that int8 hurts most
    score lowest; the output of ``call`` is PyTorch's, untouched.

    Example:
        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Linear(64, 64))
        >>> sample = torch.randn(128, 64)
        >>> scores = layer_snr_db(model, lambda: model(sample), {"0": (-4.0, 4.0)})
        >>> 20 < scores["0"] < 60
        True
    """
    scores: dict[str, float] = {}

    def measure(name: str, stand_in: _FakeQuantized) -> Any:
        def hook(layer: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: torch.Tensor) -> None:
            tensor = _input_of(args, kwargs)
            if tensor is None:
                return
            score = snr_db(output.detach(), stand_in(tensor.detach()))
            score = -math.inf if math.isnan(score) else score  # a non-finite output: the worst layer of all
            scores[name] = min(score, scores.get(name, math.inf))

        return hook

    handles = []
    try:
        for name, (low, high) in ranges.items():
            layer = module.get_submodule(name)
            assert isinstance(layer, _LAYERS)
            stand_in = _FakeQuantized(layer, low, high, weight_bits)
            handles.append(layer.register_forward_hook(measure(name, stand_in), with_kwargs=True))
        with torch.no_grad():
            call()
    finally:
        for handle in handles:
            handle.remove()
    return scores


def _input_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
    """The tensor a convolution or linear layer was called with, positionally or as ``input=`` (diffusers'
    motion modules call ``proj_in(input=...)``)."""
    tensor = args[0] if args else kwargs.get("input")
    return tensor if isinstance(tensor, torch.Tensor) else None


class CalibrationCalls:
    """The calls of one input signature kept while int8 calibrates, to check the int8 model on (`checked`:
    the first, the middle and the last): the first call, every `stride`-th after it up to `KEPT` (the stride
    doubles and every other is dropped when they would be more), and the latest. A UNet converted block by
    block keeps a few copies of each block's large inputs, not one per step: 20 steps of SD1.5's nine blocks,
    one copy per call, took the 24 GB host's bench out of memory."""

    KEPT = 8

    def __init__(self) -> None:
        self.spaced: list[Any] = []
        self.latest: Any = None
        self.stride = 1
        self.count = 0

    def add(self, call: Any) -> None:
        if self.count % self.stride == 0:
            self.spaced.append(call)
            if len(self.spaced) > self.KEPT:
                self.spaced = self.spaced[::2]
                self.stride *= 2
        self.latest = call
        self.count += 1

    def checked(self) -> list[Any]:
        """The first, the middle and the latest call kept (fewer if fewer were seen), in call order."""
        if not self.count:
            return []
        picked = [self.spaced[0], self.spaced[len(self.spaced) // 2], self.latest]
        return [call for index, call in enumerate(picked) if all(call is not other for other in picked[:index])]
