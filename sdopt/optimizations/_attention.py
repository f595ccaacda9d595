"""Saving and restoring attention processors exactly (shared by attention optimizations)."""

from __future__ import annotations

from typing import Any

import torch


def attention_modules(model: torch.nn.Module) -> list[Any]:
    """Every submodule of ``model`` that holds an attention processor."""
    return [module for module in model.modules() if hasattr(module, "set_processor") and hasattr(module, "processor")]


_ABSENT = object()


def save_processor_backends(model: torch.nn.Module) -> list[tuple[Any, Any]]:
    """Each processor's own ``_attention_backend`` setting (diffusers' dispatcher), to restore exactly."""
    seen: dict[int, tuple[Any, Any]] = {}
    for module in attention_modules(model):
        processor = module.processor
        if processor is not None and hasattr(processor, "_attention_backend"):
            seen[id(processor)] = (processor, processor.__dict__.get("_attention_backend", _ABSENT))
    return list(seen.values())


def restore_processor_backends(saved: list[tuple[Any, Any]]) -> None:
    for processor, value in saved:
        if value is _ABSENT:
            processor.__dict__.pop("_attention_backend", None)
        else:
            processor.__dict__["_attention_backend"] = value


def save_processors(model: torch.nn.Module) -> list[tuple[Any, Any]]:
    """The processor object of each attention module, to give back with `restore_processors`."""
    return [(module, module.processor) for module in attention_modules(model)]


def restore_processors(saved: list[tuple[Any, Any]]) -> None:
    """Put the very same processor objects back (diffusers' own ``set_processor``, module by module)."""
    for module, processor in saved:
        if module.processor is not processor:
            module.set_processor(processor)
