"""Weights stored in a small dtype and upcast one layer at a time for compute (diffusers' layerwise casting)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

import torch

from sdopt.anatomy import Anatomy
from sdopt.capabilities import Capabilities
from sdopt.optimization import Optimization, Undo, register
from sdopt.optimizations._attributes import HOOK_ATTRIBUTES, remember_attributes
from sdopt.optimizations._components import chosen_components, unknown_components
from sdopt.originals import keep
from sdopt.undo import UndoStack

_HOOK = "layerwise_casting"  # diffusers' name for its LayerwiseCastingHook
_STORAGE_DTYPES = {
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    **{name: getattr(torch, name) for name in ("float8_e4m3fn", "float8_e5m2") if hasattr(torch, name)},
}


@dataclass(frozen=True)
class WeightStorageConfig:
    """``dtype``: the storage dtype. "auto" stores bfloat16 weights in components that compute in
    float32 and leaves 16-bit components alone (float8 storage is lossier: ask for it by name,
    "float8_e4m3fn" or "float8_e5m2"). ``components``: which module components; empty means the
    denoiser, text encoders, VAEs and ControlNets."""

    dtype: Literal["auto", "bfloat16", "float16", "float8_e4m3fn", "float8_e5m2"] = "auto"
    components: tuple[str, ...] = ()


@register
class WeightStorage(Optimization):
    """``apply_layerwise_casting``: weights rest in ``dtype`` and each layer is upcast to the compute
    dtype only while it runs, so memory is that of the small dtype and arithmetic stays full precision.

    The lever for RAM on CPUs without bf16 units, where bf16 *compute* is slower than float32 but
    bf16 *storage* halves the weights (the per-layer casts cost a few percent). Layers are chosen as
    ``ModelMixin.enable_layerwise_casting`` chooses them (Linear, Conv and Embedding layers, not
    norms, positional/patch embeddings or the first and last projections, nor a model's
    ``_keep_in_fp32_modules``); in transformers text encoders Embedding layers stay as they are (the
    models read embedding weights directly, past the layer's forward). Lossy: bfloat16 storage of
    the tiny SD pipeline measures PSNR 45.5 dB against float32, float8_e4m3fn 24.6 dB
    (tests/optimizations/test_weight_storage.py). diffusers' hook cannot be removed
    (its ``deinitalize_hook`` raises); undo takes it off here and puts the original weights back from
    where undo's originals are kept (docs/memory.md).

    Examples:
        >>> import torch
        >>> from sdopt import optimize
        >>> from sdopt.testing import tiny_pipeline, fake_capabilities
        >>> pipe = tiny_pipeline("sd")
        >>> report = optimize(pipe, tier=None, extra=["weight_storage"], caps=fake_capabilities("cpu"))
        >>> pipe.unet.down_blocks[0].resnets[0].conv1.weight.dtype
        torch.bfloat16
        >>> report.undo()
        >>> pipe.unet.down_blocks[0].resnets[0].conv1.weight.dtype
        torch.float32
    """

    name = "weight_storage"
    kind = "precision"
    summary = "weights stored in bfloat16/float8, upcast layer by layer for full-precision compute"
    Config = WeightStorageConfig
    lossy = True
    effect = "memory"
    after = ("vae_fp16_fix", "tiny_vae")
    # half_precision already halves the weights (a plan with both would store nothing smaller: an
    # explicit float8 request wins over a tier's half_precision); quantizers replace the same Linear
    # layers; fuse_qkv would build its fused layers from the stored dtype, with no casting hook;
    # compiled graphs would trace the per-layer casts; sequential offload keeps weights on the meta
    # device, where the casts have nothing to cast.
    conflicts = (
        "half_precision",
        "quantize_int8",
        "quantize_4bit",
        "fuse_qkv",
        "torch_compile",
        "sequential_offload",
    )

    def check(self, anatomy: Anatomy, caps: Capabilities, config: Any) -> str | None:
        try:
            from diffusers.hooks import apply_layerwise_casting  # noqa: F401
        except ImportError:
            return "this diffusers has no layerwise casting (needs diffusers >= 0.33)"
        if config.dtype not in ("auto", *_STORAGE_DTYPES):
            return f"this torch has no {config.dtype} dtype"
        unknown = unknown_components(anatomy, config.components)
        if unknown:
            return unknown
        targets = self._targets(anatomy, config)
        if not targets:
            if config.dtype == "auto":
                return (
                    "every component already computes in 16 bits; float8 storage is lossier: ask for it with "
                    "{'name': 'weight_storage', 'dtype': 'float8_e4m3fn'}"
                )
            return f"no component has layers to store in {config.dtype}"
        return None

    def storage(self, anatomy: Anatomy, config: Any, sizes: dict[str, float]) -> dict[str, float]:
        from sdopt.footprint import component_bytes, planned_element_size

        now = component_bytes(anatomy)
        for name, (module, dtype) in self._targets(anatomy, config).items():
            if name not in sizes:
                continue
            planned = sizes[name]
            for tensor in _stored_tensors(module, planning=True):
                element = planned_element_size(tensor, now.get(name, 0.0), planned)
                sizes[name] -= tensor.numel() * max(0.0, element - dtype.itemsize)
        return sizes

    def describe(self, config: Any, anatomy: Anatomy) -> str:
        # Described before applying (the targets) and after (the hooks in place).
        stored = {name: dtype for name, (_, dtype) in self._targets(anatomy, config).items()}
        for name, module in anatomy.modules().items():
            hook = _casting_hook(module)
            if hook is not None:
                stored[name] = hook.storage_dtype
        parts = [f"{name} in {str(dtype).removeprefix('torch.')}" for name, dtype in stored.items()]
        return "weights stored " + ", ".join(parts) + ", upcast layer by layer for compute"

    def apply(self, pipe: Any, anatomy: Anatomy, caps: Capabilities, config: Any) -> Undo:
        # Layerwise casting breaks code that reads a layer's weight dtype outside the layer's forward:
        # IP-Adapter's ImageProjection casts its input to `image_embeds.weight.dtype`, and parts of
        # Kandinsky 2.2 and Stable Cascade do the same (the zoo, on a CPU without fast bf16). A minimal
        # call finds out before the caller's first call does; a failure is reported and rolled back.
        from sdopt.verification import run_verification

        undo = self._cast(anatomy, config)
        try:
            run_verification(pipe)
            return undo
        except Exception as error:
            undo()
            failure = error
        try:
            run_verification(pipe)
        except Exception:  # the untouched pipeline cannot make the minimal call either: nothing learnt
            return self._cast(anatomy, config)
        raise RuntimeError(
            f"with weights stored small the pipeline's call fails ({type(failure).__name__}: {failure}): it reads "
            "weights outside their layers, which diffusers' layerwise casting does not cover"
        ) from failure

    def _cast(self, anatomy: Anatomy, config: Any) -> Undo:
        from diffusers.hooks import apply_layerwise_casting

        undo = UndoStack()
        try:
            for module, storage_dtype in self._targets(anatomy, config).values():
                compute_dtype = _compute_dtype(module)
                undo.push(_removable(module))
                undo.push(keep(_stored_tensors(module), owner=module).restore)
                apply_layerwise_casting(
                    module,
                    storage_dtype=storage_dtype,
                    compute_dtype=compute_dtype,
                    skip_modules_pattern=_skip_patterns(module),
                    skip_modules_classes=_skip_classes(module),
                )
        except Exception:
            undo()
            raise
        return undo

    @staticmethod
    def _targets(anatomy: Anatomy, config: Any) -> dict[str, tuple[torch.nn.Module, torch.dtype]]:
        """Component name -> (module, storage dtype), for components with layers left to cast."""
        modules = anatomy.modules()
        names = chosen_components(anatomy, config.components)
        targets = {}
        for name in names:
            module = modules.get(name)
            if module is None or _casting_active(module):
                continue
            compute = _compute_dtype(module)
            if config.dtype == "auto":
                if compute != torch.float32:
                    continue
                dtype = torch.bfloat16
            else:
                dtype = _STORAGE_DTYPES[config.dtype]
            if dtype.itemsize < compute.itemsize and _stored_tensors(module, planning=True):
                targets[name] = (module, dtype)
        return targets


def _compute_dtype(module: torch.nn.Module) -> torch.dtype:
    for tensor in module.parameters():
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float32


def _skip_patterns(module: torch.nn.Module) -> tuple[str, ...]:
    """The patterns ``ModelMixin.enable_layerwise_casting`` uses, for any component."""
    from diffusers.hooks.layerwise_casting import DEFAULT_SKIP_MODULES_PATTERN

    patterns = [*DEFAULT_SKIP_MODULES_PATTERN]
    patterns += list(getattr(module, "_keep_in_fp32_modules", None) or ())
    patterns += list(getattr(module, "_skip_layerwise_casting_patterns", None) or ())
    return tuple(sorted(set(patterns)))


def _skip_classes(module: torch.nn.Module) -> tuple[type[torch.nn.Module], ...]:
    if not type(module).__module__.startswith("diffusers."):
        return (torch.nn.Embedding,)
    # Written here because diffusers has nothing for it: ImageProjection (Kandinsky 2.2's image
    # embeddings, IP-Adapter's projection) casts its input to its Linear's *stored* dtype before that
    # Linear's casting hook upcasts the weight, so the Linear would get a bfloat16 input against
    # float32 weights. Kept whole in the compute dtype (a few small layers).
    from diffusers.models.embeddings import ImageProjection

    return (ImageProjection,)


def _cast_layers(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The layers ``apply_layerwise_casting`` hooks with these patterns (its own walk, mirrored so
    planning can count them without applying)."""
    from diffusers.hooks._common import _GO_LC_SUPPORTED_PYTORCH_LAYERS

    patterns, classes = _skip_patterns(module), _skip_classes(module)
    found: list[torch.nn.Module] = []

    def walk(layer: torch.nn.Module, prefix: str) -> None:
        if isinstance(layer, classes) or any(re.search(p, prefix) for p in patterns):
            return
        if isinstance(layer, _GO_LC_SUPPORTED_PYTORCH_LAYERS):
            found.append(layer)
            return
        for name, child in layer.named_children():
            walk(child, f"{prefix}.{name}" if prefix else name)

    walk(module, "")
    return found


def _stored_tensors(module: torch.nn.Module, *, planning: bool = False) -> list[torch.Tensor]:
    """The floating tensors the casting will store in the small dtype (``module.to(dtype)`` of each
    layer); when ``planning``, also those of a pipeline built on the meta device (``--arch``)."""
    tensors: dict[int, torch.Tensor] = {}
    for layer in _cast_layers(module):
        for tensor in [*layer.parameters(), *layer.buffers()]:
            if tensor.is_floating_point() and (planning or tensor.device.type != "meta"):
                tensors[id(tensor)] = tensor
    return list(tensors.values())


def _casting_hook(module: torch.nn.Module) -> Any:
    for sub in module.modules():
        hook = getattr(getattr(sub, "_diffusers_hook", None), "hooks", {}).get(_HOOK)
        if hook is not None:
            return hook
    return None


def _casting_active(module: torch.nn.Module) -> bool:
    return _casting_hook(module) is not None


def _removable(module: torch.nn.Module) -> Undo:
    """What takes the casting hooks about to be added off again: diffusers' ``remove_hook`` with the
    hook's raising ``deinitalize_hook`` bypassed (the weights are put back from the originals), then
    each module's hook attributes and any registry that existed before as they were."""
    submodules = list(module.modules())
    attributes = [remember_attributes(sub, HOOK_ATTRIBUTES) for sub in submodules]
    registries = [
        (registry, dict(registry.hooks), list(registry._hook_order), list(registry._fn_refs))
        for sub in submodules
        if (registry := getattr(sub, "_diffusers_hook", None)) is not None
    ]

    def undo() -> None:
        for sub in submodules:
            registry = getattr(sub, "_diffusers_hook", None)
            if registry is not None and (hook := registry.get_hook(_HOOK)) is not None:
                hook.deinitalize_hook = lambda layer: layer  # diffusers' raises NotImplementedError
                registry.remove_hook(_HOOK, recurse=False)
        for registry, hooks, order, fn_refs in registries:
            registry.hooks.clear()
            registry.hooks.update(hooks)
            registry._hook_order[:] = order
            registry._fn_refs[:] = fn_refs
        for restore in attributes:
            restore()

    return undo
