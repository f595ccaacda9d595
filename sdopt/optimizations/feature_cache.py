"""Reuse the expensive inner features of the denoiser between steps (DeepCache / first-block cache)."""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field
from typing import Any

import torch

from sdopt.anatomy import Anatomy, is_compiled
from sdopt.calls import CallLayer, wrap_call
from sdopt.capabilities import Capabilities
from sdopt.optimization import Optimization, Undo, register, within
from sdopt.optimizations._attributes import HOOK_ATTRIBUTES, remember_attributes
from sdopt.undo import UndoStack

_HOOK = "sdopt_deep_cache"


@dataclass(frozen=True)
class FeatureCacheConfig:
    """UNets: ``interval`` (run the deep blocks on every ``interval``-th step only, DeepCache).
    Transformers with diffusers' caches: ``threshold`` (first-block cache: skip the remaining
    blocks while the first block's output changes less than this, relatively)."""

    interval: int = field(default=3, metadata=within(2))
    threshold: float = field(default=0.1, metadata=within(0, above=True))


@register
class FeatureCache(Optimization):
    """Adjacent denoising steps compute nearly the same deep features. On UNets (where diffusers
    has no cache) a DeepCache-style cache is built on diffusers' hook registry: the deep down
    blocks, the mid block and all up blocks but the last run only on every ``interval``-th step and
    replay their last output in between, while the shallow first and last blocks always run. On
    transformers that support ``enable_cache`` (Flux, Wan, HunyuanVideo, LTX...), diffusers'
    ``FirstBlockCacheConfig`` is used, with a threshold that skips work (diffusers' 0.05 default
    skipped nothing on a tiny Flux). Lossy.

    Examples:
        >>> from sdopt import optimize
        >>> from sdopt.testing import tiny_pipeline
        >>> pipe = tiny_pipeline("sd")
        >>> report = optimize(pipe, tier=None, extra=["feature_cache"])
        >>> report.applied[0].reason
        'deep UNet blocks run every 3rd step (DeepCache)'
        >>> report.undo()
    """

    name = "feature_cache"
    # A timed call runs the first denoiser calls per shape for real (2): a cache skipping work on 2 of 3
    # steps shows only part of its gain there, so the speed guard would under-rate it.
    speed_judged = False
    kind = "cache"
    summary = "reuse deep denoiser features between steps (DeepCache on UNets, first-block cache on DiTs)"
    Config = FeatureCacheConfig
    lossy = True
    conflicts = ("torch_compile",)
    # Its hooks wrap what stands in for the deep blocks (OpenVINO block by block, which composes with it).
    after = ("openvino_runtime",)

    def check(self, anatomy: Anatomy, caps: Capabilities, config: Any) -> str | None:
        denoiser = anatomy.denoiser
        if config.interval < 2 or config.threshold <= 0:
            return f"interval must be >= 2 and threshold > 0, got {config.interval}, {config.threshold}"
        if denoiser is None:
            return "the pipeline has no denoiser"
        if is_compiled(denoiser):
            return "the denoiser is compiled: cache hooks would force a recompile (or break a fullgraph one)"
        if _deep_modules(denoiser):
            if _HOOK in getattr(getattr(denoiser, "_diffusers_hook", None), "hooks", {}):
                return "already active"
            return None
        if hasattr(denoiser, "enable_cache"):
            if getattr(denoiser, "is_cache_enabled", False):
                return "already active"
            return _why_no_first_block_cache(anatomy)
        return f"{type(denoiser).__name__} has neither UNet blocks to cache nor diffusers' enable_cache"

    def describe(self, config: Any, anatomy: Anatomy) -> str:
        if _deep_modules(anatomy.denoiser):
            return f"deep UNet blocks run every {_ordinal(config.interval)} step (DeepCache)"
        return f"diffusers first-block cache (threshold {config.threshold:g})"

    def apply(self, pipe: Any, anatomy: Anatomy, caps: Capabilities, config: Any) -> Undo:
        denoiser = anatomy.denoiser
        deep = _deep_modules(denoiser)
        if not deep:
            from diffusers import FirstBlockCacheConfig

            restore = [remember_attributes(m, HOOK_ATTRIBUTES) for m in denoiser.modules()]
            denoiser.enable_cache(FirstBlockCacheConfig(threshold=config.threshold))

            # One entry per action (an interrupted undo resumes at the action it was in); disable_cache
            # leaves empty registries behind, which the put-backs remove.
            undo = UndoStack()
            for put_back in restore:
                undo.push(put_back)
            undo.push(lambda: denoiser.disable_cache() if denoiser.is_cache_enabled else None)
            return undo
        return _deep_cache(pipe, denoiser, deep, config.interval)


def _why_no_first_block_cache(anatomy: Anatomy) -> str | None:
    """Why diffusers' first-block cache cannot run on this pipeline, if it cannot: it needs the
    pipeline to open ``transformer.cache_context(...)`` around each call (else "No cache context is
    set" on every call) and at least two transformer blocks of classes its registry knows."""
    from diffusers.hooks._common import _ALL_TRANSFORMER_BLOCK_IDENTIFIERS
    from diffusers.hooks._helpers import TransformerBlockRegistry

    if not _calls_cache_context(type(anatomy.pipeline)):
        return f"{anatomy.pipeline_class} does not open the transformer's cache_context, which diffusers' cache needs"
    blocks = [
        block
        for name, child in anatomy.denoiser.named_children()
        if name in _ALL_TRANSFORMER_BLOCK_IDENTIFIERS and isinstance(child, torch.nn.ModuleList)
        for block in child
    ]
    if len(blocks) < 2:
        return f"{type(anatomy.denoiser).__name__} has {len(blocks)} transformer block(s): nothing to skip"
    for cls in dict.fromkeys(type(block) for block in blocks):
        try:
            TransformerBlockRegistry.get(cls)
        except ValueError:
            return f"diffusers' first-block cache does not know {cls.__name__} (not in its block registry)"
    return None


def _calls_cache_context(pipeline_class: type) -> bool:
    for cls in pipeline_class.__mro__:
        call = cls.__dict__.get("__call__")
        if call is None:
            continue
        try:
            return "cache_context(" in inspect.getsource(inspect.unwrap(call))
        except (OSError, TypeError):
            return False
    return False


def _ordinal(n: int) -> str:
    return f"{n}{'nd' if n == 2 else 'rd' if n == 3 else 'th'}"


def _deep_modules(denoiser: Any) -> list[torch.nn.Module]:
    down, mid, up = (getattr(denoiser, name, None) for name in ("down_blocks", "mid_block", "up_blocks"))
    if down is None or up is None or len(down) < 2 or len(up) < 2:
        return []
    return [*down[1:], *([mid] if mid is not None else []), *up[:-1]]


class _State:
    """Where the generation is: denoising steps are told apart by their timestep, so a pipeline that
    calls the denoiser twice per step (unbatched guidance, ControlNet-style extra passes) still
    counts steps, and each call position within a step keeps its own cached features."""

    def __init__(self, interval: int) -> None:
        self.interval = interval
        self.reset()

    def reset(self) -> None:
        self.steps, self.position, self.full = 0, 0, True
        self.timestep: Any = None
        self.batch: tuple[int, ...] | None = None

    def enter_call(self, sample: torch.Tensor, timestep: Any) -> None:
        shape = tuple(sample.shape)
        key = _timestep_key(timestep)
        if self.timestep is None or key != self.timestep:
            # A new step; the first one of a generation runs in full (so does any after a change of shape).
            self.full = self.steps % self.interval == 0
            self.steps += 1
            self.position = 0
            self.timestep = key
        else:
            self.position += 1
        if shape != self.batch:
            self.full = True
        self.batch = shape


class _NewGeneration(CallLayer):
    """Every generation starts with a full step."""

    def __init__(self, name: str, state: _State) -> None:
        super().__init__(name)
        self.state = state

    def adjust(self, pipe: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        self.state.reset()
        return kwargs


def _timestep_key(timestep: Any) -> Any:
    if isinstance(timestep, torch.Tensor):
        return tuple(timestep.detach().flatten()[:1].tolist())
    return timestep


def _deep_cache(pipe: Any, denoiser: Any, deep: list[torch.nn.Module], interval: int) -> Undo:
    from diffusers.hooks import HookRegistry, ModelHook

    state = _State(interval)

    # The hooks and the call layer hold the state as an attribute, not in a closure.
    class StepCounter(ModelHook):
        def __init__(self, state: _State) -> None:
            super().__init__()
            self.state = state

        def pre_forward(self, module: Any, *args: Any, **kwargs: Any) -> Any:
            sample = args[0] if args else kwargs["sample"]
            timestep = args[1] if len(args) > 1 else kwargs.get("timestep")
            self.state.enter_call(sample, timestep)
            return args, kwargs

    class ReuseOutput(ModelHook):
        def __init__(self, state: _State) -> None:
            super().__init__()
            self.state = state
            self.cached: dict[int, Any] = {}

        def new_forward(self, module: Any, *args: Any, **kwargs: Any) -> Any:
            state = self.state
            if state.full or state.position not in self.cached:
                forward: Any = self.fn_ref.original_forward
                self.cached[state.position] = forward(*args, **kwargs)
            return self.cached[state.position]

    restore = [remember_attributes(m, HOOK_ATTRIBUTES) for m in [denoiser, *deep]]
    HookRegistry.check_if_exists_or_initialize(denoiser).register_hook(StepCounter(state), _HOOK)
    for module in deep:
        HookRegistry.check_if_exists_or_initialize(module).register_hook(ReuseOutput(state), _HOOK)
    unwrap = wrap_call(pipe, _NewGeneration("feature_cache", state))

    def remove_hook(module: torch.nn.Module) -> None:
        registry = module.__dict__.get("_diffusers_hook")
        if registry is not None and registry.get_hook(_HOOK) is not None:
            registry.remove_hook(_HOOK, recurse=False)

    # One entry per action, run newest first: an interrupted undo (Ctrl-C) resumes at the action it was in.
    undo = UndoStack()
    for put_back in restore:
        undo.push(put_back)
    for module in [denoiser, *deep]:
        undo.push(functools.partial(remove_hook, module))
    undo.push(unwrap)
    return undo
