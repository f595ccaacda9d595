"""How a pipeline is called: the one place that knows it.

- **The call layer.** ``pipe(...)`` looks ``__call__`` up on the class, so an instance attribute would
  be ignored. For call-time optimizations (step budget, guidance, resolution...) the pipeline
  instance gets a subclass of its own class (same ``__name__``, so diffusers saves it under its own
  name) whose ``__call__`` runs the instance's `CallLayer` objects around the original call;
  the undo removes the layer, and the last one gives the instance its original class back. Layers
  keep their settings and state in their own attributes (no closures), so ``copy.deepcopy`` of an
  optimized pipeline gets layers of its own, and ``pickle`` finds the subclass by name.
- **What happened during calls** (`note_after_calls`): kept on the pipeline itself, so the
  engine's transaction records and restores it like any other change.
- **Defaults and made-up calls**: the pipeline's default size and steps, the keyword arguments of a
  minimal real call (`verification_kwargs`), placeholder images, and `CallShape` (the
  shape of an app's calls, which tuning, bench and generate measure).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import re
import sys
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch

from sdopt.anatomy import Anatomy, inspect_pipeline
from sdopt.undo import Undo

_LAYERS = "_sdopt_call_layers"
_PREFIX = "Wrapped__"


class CallLayer:
    """One optimization's change to a call: ``adjust`` the keyword arguments on the way in, ``finish``
    the output on the way out, hold ``around`` context (settings that must hold during the call only).
    Subclasses keep what they need as attributes."""

    def __init__(self, name: str) -> None:
        self.name = name

    def adjust(self, pipe: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        return kwargs

    def finish(self, pipe: Any, output: Any, kwargs: dict[str, Any]) -> Any:
        """``kwargs`` are the arguments as they reached this layer, before its ``adjust``."""
        return output

    def around(self, pipe: Any) -> AbstractContextManager[Any]:
        return contextlib.nullcontext()


STAND_IN = "_sdopt_stand_in"
"""Instance attribute under which a step that stands in for a module's method (``forward``) also keeps its
stand-in, so `BuildAfterCall` finds it where hooks set later (feature caching's) wrap ``forward`` itself."""


class BuildAfterCall(CallLayer):
    """At the end of each pipeline call, every stand-in kept as `STAND_IN` on the component named
    ``component`` or on its submodules builds what the call recorded (its ``build_pending()``:
    `static_int8`'s programs, `openvino_runtime`'s int8 models, one per block when it converts block by
    block), so that calibration spans every step of the call."""

    def __init__(self, name: str, component: str) -> None:
        super().__init__(name)
        self.component = component

    def finish(self, pipe: Any, output: Any, kwargs: dict[str, Any]) -> Any:
        for module in getattr(pipe, self.component).modules():
            build = getattr(module.__dict__.get(STAND_IN), "build_pending", None)
            if callable(build):
                build()
        return output


def wrap_call(pipe: Any, layer: CallLayer) -> Undo:
    """Run ``layer`` around every ``pipe(...)`` call (newest layer outermost); the undo removes it."""
    original_class = _original_class(type(pipe))
    layers: list[CallLayer] = pipe.__dict__.setdefault(_LAYERS, [])
    layers.append(layer)
    pipe.__class__ = _wrapper_class(original_class)

    def undo() -> None:
        current = pipe.__dict__.get(_LAYERS, [])
        if layer in current:
            current.remove(layer)
        if not current:
            pipe.__dict__.pop(_LAYERS, None)
            pipe.__class__ = original_class

    return undo


def call_layers(pipe: Any) -> list[str]:
    """The names of the optimizations wrapping ``pipe``'s call, oldest first."""
    return [layer.name for layer in pipe.__dict__.get(_LAYERS, ())]


def _original_class(cls: type) -> type:
    return cls.__dict__.get("_sdopt_original", cls)


@functools.cache
def _wrapper_class(original_class: type) -> type:
    @functools.wraps(original_class.__call__)  # the signature (and docs) stay the pipeline's
    def __call__(self: Any, *args: Any, **kwargs: Any) -> Any:
        outermost_first = list(reversed(self.__dict__.get(_LAYERS, ())))
        seen: list[dict[str, Any]] = []
        with contextlib.ExitStack() as stack:
            for layer in outermost_first:
                stack.enter_context(layer.around(self))
                seen.append(dict(kwargs))
                kwargs = layer.adjust(self, dict(kwargs))
            output = original_class.__call__(self, *args, **kwargs)
        for layer, arrived in zip(reversed(outermost_first), reversed(seen), strict=True):
            output = layer.finish(self, output, arrived)
        return output

    name = _PREFIX + _escape(original_class.__module__) + "_S" + _escape(original_class.__qualname__)
    wrapper = type(
        original_class.__name__,
        (original_class,),
        {"__call__": __call__, "__module__": __name__, "__qualname__": name, "_sdopt_original": original_class},
    )
    setattr(sys.modules[__name__], name, wrapper)  # where pickle looks for it
    return wrapper


def _escape(text: str) -> str:
    """An identifier for ``text``: "_" becomes "_u" and "." becomes "_d", so "_S" can separate parts."""
    return text.replace("_", "_u").replace(".", "_d")


def _unescape(text: str) -> str:
    return re.sub(r"_([ud])", lambda match: "_" if match.group(1) == "u" else ".", text)


def __getattr__(name: str) -> Any:
    """Rebuild a wrapper class by name, for ``pickle`` in a process that has not wrapped that class yet."""
    import importlib

    module, separator, qualname = name.removeprefix(_PREFIX).partition("_S")
    if not name.startswith(_PREFIX) or not separator:
        raise AttributeError(name)
    try:
        original: Any = importlib.import_module(_unescape(module))
        for part in _unescape(qualname).split("."):
            original = getattr(original, part)
    except (ImportError, AttributeError, TypeError, ValueError) as error:
        raise AttributeError(f"{name}: the pipeline class it wraps cannot be imported ({error})") from error
    return _wrapper_class(original)


def call_parameters(pipe: Any) -> Mapping[str, inspect.Parameter]:
    """The parameters of the pipeline's ``__call__``."""
    return inspect.signature(_original_class(type(pipe)).__call__).parameters


def call_default(pipe: Any, parameter: str) -> Any:
    """The default value of ``parameter`` in the pipeline's ``__call__`` (``None`` if absent)."""
    found = call_parameters(pipe).get(parameter)
    if found is None or found.default is inspect.Parameter.empty:
        return None
    return found.default


# ---- what optimizations did during calls

_NOTES = "_sdopt_after_calls"


def note_after_calls(pipe: Any, name: str, describe: Callable[[], str]) -> Undo:
    """Make ``describe()`` the live account of what optimization ``name`` did during ``pipe``'s calls
    (`sdopt.Report.after_calls`); the returned undo withdraws it. The notes live on the pipeline
    and are rebound, never mutated, so the engine's record of the pipeline restores them."""
    pipe.__dict__[_NOTES] = {**pipe.__dict__.get(_NOTES, {}), name: describe}

    def undo() -> None:
        notes = {key: value for key, value in pipe.__dict__.get(_NOTES, {}).items() if key != name}
        if notes:
            pipe.__dict__[_NOTES] = notes
        else:
            pipe.__dict__.pop(_NOTES, None)

    return undo


def after_calls(pipe: Any) -> dict[str, Callable[[], str]]:
    """The notes `note_after_calls` left on ``pipe``, by optimization name."""
    return dict(pipe.__dict__.get(_NOTES, {}))


# ---- the pipeline's defaults

# Families whose pipelines pack 2x2 latent patches into tokens.
PACKED_FAMILIES = ("flux", "chroma")


def default_size(anatomy: Anatomy) -> int | None:
    """The image side the pipeline generates when the caller gives none (its own rule, from its parts)."""
    sample = getattr(anatomy.pipeline, "default_sample_size", None)
    if not isinstance(sample, int):
        sample = getattr(getattr(anatomy.denoiser, "config", None), "sample_size", None)
    if isinstance(sample, (list, tuple)):
        sample = sample[0]
    return int(sample) * pixels_per_latent(anatomy) if isinstance(sample, int) else None


def default_height(anatomy: Anatomy) -> int | None:
    """The height the pipeline generates when the caller gives none: `default_size`, or the
    default of its ``__call__``'s ``height`` (video pipelines such as Wan keep it there)."""
    side = default_size(anatomy) or call_default(anatomy.pipeline, "height")
    return side if isinstance(side, int) else None


def pixels_per_latent(anatomy: Anatomy) -> int:
    """How many pixels one latent covers along a side (1 for pixel-space pipelines)."""
    pipe = anatomy.pipeline
    for attribute in ("vae_scale_factor", "vae_scale_factor_spatial", "movq_scale_factor"):
        factor = getattr(pipe, attribute, None)
        if isinstance(factor, int) and factor > 0:
            return factor
    blocks = getattr(getattr(anatomy.vae, "config", None), "block_out_channels", None)
    return int(2 ** (len(blocks) - 1)) if blocks else 1


def latents_per_token(anatomy: Anatomy) -> int:
    """Latents per token along a side: the denoiser's patch size, times 2 where the pipeline packs
    2x2 latent patches itself (Flux, Chroma)."""
    patch = getattr(getattr(anatomy.denoiser, "config", None), "patch_size", None) or 1
    if isinstance(patch, (list, tuple)):
        patch = patch[-1]
    return int(patch) * (2 if anatomy.family in PACKED_FAMILIES else 1)


# ---- calls sdopt makes itself

_IMAGE_INPUTS = ("image", "control_image", "mask_image")


def verification_kwargs(pipe: Any) -> dict[str, Any]:
    """Keyword arguments of a minimal real call of ``pipe`` (whatever its layers of sdopt wrappers).

    Examples:
        >>> from sdopt.testing import tiny_pipeline
        >>> from sdopt.calls import verification_kwargs
        >>> kwargs = verification_kwargs(tiny_pipeline("sd"))
        >>> kwargs["num_inference_steps"], kwargs["height"], kwargs["width"]
        (2, 64, 64)
    """
    anatomy = inspect_pipeline(pipe)
    parameters = call_parameters(pipe)
    size = _small_size(anatomy)
    kwargs: dict[str, Any] = {}
    if "prompt" in parameters:
        # In the trained tiny pipelines' vocabulary and under their 16 tokens; any model reads it.
        kwargs["prompt"] = "a red circle at the top left on a white background"
    if "num_inference_steps" in parameters:
        kwargs["num_inference_steps"] = 2
    if "height" in parameters and "width" in parameters and size is not None:
        kwargs["height"] = kwargs["width"] = size
    if "generator" in parameters:
        kwargs["generator"] = torch.Generator("cpu").manual_seed(0)
    if "output_type" in parameters:
        kwargs["output_type"] = "np"
    if "num_frames" in parameters:
        kwargs["num_frames"] = 9  # valid for 4k+1 (Wan, CogVideoX) and 8k+1 (LTX) frame counts
    for name in _IMAGE_INPUTS:
        if name in parameters:
            kwargs[name] = placeholder_image(size or 64, mask=name == "mask_image")
    if "ip_adapter_image" in parameters and _has_ip_adapter(anatomy):
        kwargs["ip_adapter_image"] = placeholder_image(size or 64)
    return {**kwargs, **needed_kwargs(pipe)}


_BINNED_SAMPLE_SIZES = (32, 64, 128)
"""The denoiser sample sizes PixArt's resolution binning knows (256, 512, 1024 pixels)."""


def needed_kwargs(pipe: Any) -> dict[str, Any]:
    """Settings any call of ``pipe`` needs to run at all: today, PixArt-style pipelines whose denoiser
    was made at a size its resolution binning does not know (the trained tiny DiT) raise "Invalid sample
    size" unless binning is off.

    Examples:
        >>> from sdopt.calls import needed_kwargs
        >>> from sdopt.testing import tiny_pipeline
        >>> needed_kwargs(tiny_pipeline("pixart")), needed_kwargs(tiny_pipeline("sd"))
        ({'use_resolution_binning': False}, {})
    """
    if "use_resolution_binning" not in call_parameters(pipe):
        return {}
    sample = getattr(getattr(inspect_pipeline(pipe).denoiser, "config", None), "sample_size", None)
    return {} if sample in _BINNED_SAMPLE_SIZES else {"use_resolution_binning": False}


def _small_size(anatomy: Anatomy) -> int | None:
    default = default_height(anatomy)
    if default is None:
        return None
    grid = 8 * pixels_per_latent(anatomy) * latents_per_token(anatomy)  # room for 3 downsamplings
    return max(grid, default // 4 // grid * grid)


def _has_ip_adapter(anatomy: Anatomy) -> bool:
    denoiser = anatomy.denoiser
    return denoiser is not None and getattr(denoiser, "encoder_hid_proj", None) is not None


def placeholder_image(height: int, width: int | None = None, *, mask: bool = False) -> Any:
    """A made-up input image (a colour gradient) or mask (right half white) for calls sdopt makes itself.

    Examples:
        >>> from sdopt.calls import placeholder_image
        >>> placeholder_image(64, 32).size
        (32, 64)
    """
    from PIL import Image

    width = width or height
    if mask:
        pixels = np.zeros((height, width), dtype=np.uint8)
        pixels[:, width // 2 :] = 255
        return Image.fromarray(pixels)
    rows, columns = np.meshgrid(np.linspace(0, 255, width, dtype=np.uint8), np.linspace(0, 255, height, dtype=np.uint8))
    return Image.fromarray(np.stack([rows, columns, 255 - rows], axis=-1))


# ---- the shape of an app's calls

_FIELDS = ("height", "width", "steps", "guidance", "batch")


@dataclass(frozen=True)
class CallShape:
    """The shape of the calls an app makes: what a tuning measures and what its cache is keyed by.

    ``None`` fields take the pipeline's defaults (`of`); ``guidance`` and the size stay
    ``None`` for pipelines that take none.

    Examples:
        >>> from sdopt.testing import tiny_pipeline
        >>> from sdopt.tuning import CallShape
        >>> CallShape.of(tiny_pipeline("sd"), {"steps": 4})
        CallShape(height=64, width=64, steps=4, guidance=7.5, batch=1)
    """

    height: int | None = None
    width: int | None = None
    steps: int | None = None
    guidance: float | None = None
    batch: int = 1

    @classmethod
    def of(cls, pipe: Any, call: Mapping[str, Any] | CallShape | None = None) -> CallShape:
        """The shape ``call`` describes, its missing fields filled from ``pipe``'s defaults."""
        if isinstance(call, CallShape):
            given = call
        else:
            values = dict(call or {})
            unknown = sorted(set(values) - set(_FIELDS))
            if unknown:
                raise ValueError(f"unknown call field(s) {', '.join(unknown)}; a call shape has {', '.join(_FIELDS)}")
            given = cls(**values)
        given.check()
        parameters = call_parameters(pipe)
        side = default_height(inspect_pipeline(pipe)) if "height" in parameters else None
        steps = call_default(pipe, "num_inference_steps") if "num_inference_steps" in parameters else None
        guidance = call_default(pipe, "guidance_scale") if "guidance_scale" in parameters else None
        return replace(
            given,
            height=given.height or side,
            width=given.width or given.height or side,
            steps=given.steps or steps,
            guidance=given.guidance if given.guidance is not None else guidance,
        )

    def check(self) -> None:
        """Raise a ValueError naming the field when one cannot describe a call."""
        for name in ("height", "width", "steps", "batch"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"call shape: {name} must be a positive integer, got {value!r}")
        guidance = self.guidance
        if guidance is not None and (
            isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not 0 <= guidance < math.inf
        ):
            raise ValueError(f"call shape: guidance must be a finite number >= 0, got {guidance!r}")

    def kwargs(self, pipe: Any, seed: int = 0) -> dict[str, Any]:
        """The keyword arguments of one call of ``pipe`` at this shape (made-up prompt and images)."""
        parameters = call_parameters(pipe)
        kwargs = verification_kwargs(pipe)
        if self.height is not None and "height" in parameters:
            kwargs["height"], kwargs["width"] = self.height, self.width or self.height
        for name in ("image", "control_image", "mask_image"):
            if name in kwargs and self.height is not None:
                kwargs[name] = placeholder_image(self.height, self.width or self.height, mask=name == "mask_image")
        if self.steps is not None and "num_inference_steps" in parameters:
            kwargs["num_inference_steps"] = self.steps
        if self.guidance is not None and "guidance_scale" in parameters:
            kwargs["guidance_scale"] = self.guidance
        if self.batch != 1 and "num_images_per_prompt" in parameters:
            kwargs["num_images_per_prompt"] = self.batch
        if "generator" in parameters:
            kwargs["generator"] = torch.Generator("cpu").manual_seed(seed)
        return kwargs

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        size = f"{self.width}x{self.height}" if self.height else "default size"
        guidance = f", guidance {self.guidance:g}" if self.guidance is not None else ""
        return f"{size}, {self.steps} steps{guidance}, batch {self.batch}"
