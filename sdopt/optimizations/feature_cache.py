"""Reuse the expensive inner features of the denoiser between steps (DeepCache / first-block cache)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from sdopt.anatomy import Anatomy
from sdopt.capabilities import Capabilities
from sdopt.optimizations._attributes import HOOK_ATTRIBUTES, remember_attributes
from sdopt.optimizations._call_wrapper import wrap_call
from sdopt.optimizations.base import Optimization, Undo
from sdopt.registry import register

_HOOK = "sdopt_deep_cache"


@dataclass(frozen=True)
class FeatureCacheConfig:
    """UNets: ``interval`` (run the deep blocks on every ``interval``-th step only, DeepCache).
    Transformers with diffusers' caches: ``threshold`` (first-block cache: skip the remaining
    blocks while the first block's output changes less than this, relatively)."""

    interval: int = 3
    threshold: float = 0.1


@register
class FeatureCache(Optimization):
    """Adjacent denoising steps compute nearly the same deep features. On UNets (where diffusers
    has no cache) a DeepCache-style cache is built on diffusers' hook registry: the deep down
    blocks, the mid block and all up blocks but the last run only on every ``interval``-th step and
    replay their last output in between, while the shallow first and last blocks always run. On
    transformers that support ``enable_cache`` (Flux, Wan, HunyuanVideo, LTX...), diffusers'
    ``FirstBlockCacheConfig`` is used, with a threshold that skips work (diffusers' 0.05 default
    skipped nothing on a tiny Flux). Lossy.

    Example:
        >>> from sdopt import optimize
        >>> from sdopt.testing import tiny_pipeline
        >>> pipe = tiny_pipeline("sd")
        >>> report = optimize(pipe, tier=None, extra=["feature_cache"])
        >>> report.applied[0].reason
        'deep UNet blocks run every 3rd step (DeepCache)'
        >>> report.undo()
    """

    name = "feature_cache"
    kind = "cache"
    summary = "reuse deep denoiser features between steps (DeepCache on UNets, first-block cache on DiTs)"
    Config = FeatureCacheConfig
    lossy = True
    conflicts = ("torch_compile",)

    def check(self, anatomy: Anatomy, caps: Capabilities, config: Any) -> str | None:
        denoiser = anatomy.denoiser
        if config.interval < 2 or config.threshold <= 0:
            return f"interval must be >= 2 and threshold > 0, got {config.interval}, {config.threshold}"
        if _deep_modules(denoiser):
            if _HOOK in getattr(getattr(denoiser, "_diffusers_hook", None), "hooks", {}):
                return "already active"
            return None
        if hasattr(denoiser, "enable_cache"):
            if getattr(denoiser, "is_cache_enabled", False):
                return "already active"
            return None
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

            def undo_diffusers_cache() -> None:
                denoiser.disable_cache()
                for put_back in restore:  # disable_cache leaves empty registries behind
                    put_back()

            return undo_diffusers_cache
        return _deep_cache(pipe, denoiser, deep, config.interval)


def _ordinal(n: int) -> str:
    return f"{n}{'nd' if n == 2 else 'rd' if n == 3 else 'th'}"


def _deep_modules(denoiser: Any) -> list[torch.nn.Module]:
    down, mid, up = (getattr(denoiser, name, None) for name in ("down_blocks", "mid_block", "up_blocks"))
    if down is None or up is None or len(down) < 2 or len(up) < 2:
        return []
    return [*down[1:], *([mid] if mid is not None else []), *up[:-1]]


class _State:
    def __init__(self, interval: int) -> None:
        self.interval = interval
        self.calls = 0
        self.full = True
        self.batch: tuple[int, ...] | None = None


def _deep_cache(pipe: Any, denoiser: Any, deep: list[torch.nn.Module], interval: int) -> Undo:
    from diffusers.hooks import HookRegistry, ModelHook

    state = _State(interval)

    class StepCounter(ModelHook):
        def pre_forward(self, module: Any, *args: Any, **kwargs: Any) -> Any:
            sample = args[0] if args else kwargs["sample"]
            shape = tuple(sample.shape)
            state.full = state.calls % state.interval == 0 or shape != state.batch
            state.batch = shape
            state.calls += 1
            return args, kwargs

    class ReuseOutput(ModelHook):
        def __init__(self) -> None:
            super().__init__()
            self.cached: Any = None

        def new_forward(self, module: Any, *args: Any, **kwargs: Any) -> Any:
            if state.full or self.cached is None:
                forward: Any = self.fn_ref.original_forward
                self.cached = forward(*args, **kwargs)
            return self.cached

    restore = [remember_attributes(m, HOOK_ATTRIBUTES) for m in [denoiser, *deep]]
    HookRegistry.check_if_exists_or_initialize(denoiser).register_hook(StepCounter(), _HOOK)
    for module in deep:
        HookRegistry.check_if_exists_or_initialize(module).register_hook(ReuseOutput(), _HOOK)

    def new_generation(kwargs: dict[str, Any]) -> dict[str, Any]:
        state.calls, state.batch = 0, None  # every image starts with a full step
        return kwargs

    unwrap = wrap_call(pipe, new_generation)

    def undo() -> None:
        unwrap()
        for module in [denoiser, *deep]:
            module._diffusers_hook.remove_hook(_HOOK, recurse=False)
        for put_back in restore:
            put_back()

    return undo
