"""The rows a GPU user compares with: the untouched pipeline in half precision, and the published hand
recipe for its family.

A GPU user does not run float32: they load with ``torch_dtype=torch.float16`` (``bfloat16`` for models
published in it, such as Flux) and get SDPA by default. That is the reference sdopt's GPU speedups are
reported against (``untouched-half``). The ``recipe`` row applies what the published hand recipes do,
minus what cannot be installed offline:

- UNet families (SD 1.5, SDXL): diffusion-fast (PyTorch's "Accelerating generative AI part III"):
  bf16, fused QKV, channels-last UNet and VAE, inductor's flags (1x1 convolutions as matmuls,
  coordinate-descent tuning, no epilogue fusion), torchao dynamic int8 where torchao is installed,
  then ``torch.compile(mode="max-autotune", fullgraph=True)`` of the UNet and of the VAE decode.
- Transformer families (Flux, SD3, PixArt...): flux-fast style: bf16, fused QKV, channels-last VAE,
  the same inductor flags, torchao fp8 dynamic row-wise quantization on compute capability >= 8.9
  where torchao is installed, and the same compile (max-autotune captures CUDA graphs). FA3 comes
  from the Hub and is left out.

Compiling with max-autotune and coordinate-descent tuning takes minutes on SDXL; ``compile`` chooses
"max-autotune" (as published), "default" (bounded time) or "none".
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch

from sdopt.anatomy import inspect_pipeline

UNTOUCHED_HALF = "untouched-half"
RECIPE = "recipe"
COMPILE_MODES = ("max-autotune", "default", "none")

# Published in bfloat16 (their model cards load them so); the others in float16.
_BF16_FAMILIES = ("flux", "chroma", "qwenimage", "wan", "sana", "lumina")
# diffusion-fast's and flux-fast's inductor settings.
_INDUCTOR_FLAGS = {
    "conv_1x1_as_mm": True,
    "coordinate_descent_tuning": True,
    "coordinate_descent_check_all_directions": True,
    "epilogue_fusion": False,
}


def half_dtype(pipe: Any) -> torch.dtype:
    """The dtype a user loads ``pipe``'s model in on a GPU: bfloat16 for families published in it, else
    float16.

    Examples:
        >>> from sdopt.bench.recipes import half_dtype
        >>> from sdopt.testing import tiny_pipeline
        >>> half_dtype(tiny_pipeline("sd")), half_dtype(tiny_pipeline("flux"))
        (torch.float16, torch.bfloat16)
    """
    return torch.bfloat16 if inspect_pipeline(pipe).family in _BF16_FAMILIES else torch.float16


def untouched_half(pipe: Any) -> str:
    """Cast the whole pipeline as ``from_pretrained(..., torch_dtype=...)`` would; says what it did."""
    dtype = half_dtype(pipe)
    pipe.to(dtype)
    return f"the pipeline as loaded with torch_dtype={str(dtype).removeprefix('torch.')} (SDPA, diffusers' default)"


def apply_recipe(pipe: Any, *, device: str, compile: str = "max-autotune") -> list[str]:  # noqa: A002
    """Apply the family's published hand recipe to ``pipe`` (see the module docstring); returns what it
    did, step by step. Compilation happens at the first call, under `recipe_context`.

    Examples:
        >>> from sdopt.bench.recipes import apply_recipe
        >>> from sdopt.testing import tiny_pipeline
        >>> apply_recipe(tiny_pipeline("sd"), device="cpu", compile="none")[:2]
        ['bfloat16 weights', 'fused QKV projections (unet, vae)']
    """
    if compile not in COMPILE_MODES:
        raise ValueError(f"recipe compile mode {compile!r}: choose one of {', '.join(COMPILE_MODES)}")
    anatomy = inspect_pipeline(pipe)
    denoiser, vae = anatomy.denoiser, anatomy.vae
    if denoiser is None:
        raise ValueError(f"{anatomy.pipeline_class} has no denoiser: there is no published recipe for it")
    done = []
    pipe.to(torch.bfloat16)
    done.append("bfloat16 weights")
    models = {anatomy.denoiser_name or "denoiser": denoiser, "vae": vae}
    fused = [name for name, model in models.items() if _fuse(model)]
    if fused:
        done.append(f"fused QKV projections ({', '.join(fused)})")
    layout = [name for name, model in models.items() if _has_convolutions(model)]
    for name in layout:
        models[name].to(memory_format=torch.channels_last)
    if layout:
        done.append(f"channels-last ({', '.join(layout)})")
    done.append(_quantize(denoiser, anatomy.denoiser_kind, device))
    if compile == "none":
        done.append("not compiled (compile='none')")
        return done
    if device == "mps":
        done.append("not compiled (inductor's MPS backend is experimental)")
        return done
    denoiser.compile(mode=compile, fullgraph=True)
    if vae is not None:
        vae.decode = torch.compile(vae.decode, mode=compile, fullgraph=True)
    flags = ", ".join(f"{k}={v}" for k, v in _INDUCTOR_FLAGS.items())
    done.append(f"torch.compile(mode={compile!r}, fullgraph=True) of the denoiser and the VAE decode ({flags})")
    return done


@contextlib.contextmanager
def recipe_context() -> Iterator[None]:
    """The recipe's inductor flags, only while its row renders (they are process-wide settings, and the
    other rows compile with their own)."""
    import torch._inductor.config as inductor_config

    with inductor_config.patch(_INDUCTOR_FLAGS):
        yield


def _fuse(model: Any) -> bool:
    if model is None or not hasattr(model, "fuse_qkv_projections"):
        return False
    try:
        model.fuse_qkv_projections()
    except Exception:  # noqa: BLE001  # added KV projections, IP-Adapters: the recipe fuses what it can
        return False
    return True


def _has_convolutions(model: Any) -> bool:
    return model is not None and any(isinstance(m, torch.nn.Conv2d) for m in model.modules())


def _quantize(denoiser: torch.nn.Module, kind: str, device: str) -> str:
    """diffusion-fast's int8 dynamic (UNets) or flux-fast's fp8 dynamic row-wise (transformers, sm_89+)."""
    if device not in ("cuda", "cpu"):
        return f"no quantization (torchao's kernels do not run on {device})"
    try:
        from torchao.quantization import quantize_
    except ImportError:
        return "no quantization (torchao is not installed)"
    count = sum(_large_linear(module, "") for module in denoiser.modules())
    if not count:
        return "no quantization (no Linear layer of 1024+ features)"
    if kind == "unet":
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig

        quantize_(denoiser, Int8DynamicActivationInt8WeightConfig(), filter_fn=_large_linear)
        return f"torchao int8 dynamic ({count} Linear layers of 1024+ features)"
    if device != "cuda" or torch.cuda.get_device_capability() < (8, 9):
        return "no fp8 (needs a GPU of compute capability 8.9 or newer)"
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow

    quantize_(denoiser, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()), filter_fn=_large_linear)
    return f"torchao fp8 dynamic row-wise ({count} Linear layers of 1024+ features)"


def _large_linear(module: torch.nn.Module, _name: str) -> bool:
    # Small GEMMs lose to the quantize/dequantize overhead (diffusion-fast's filter does the same).
    return isinstance(module, torch.nn.Linear) and min(module.in_features, module.out_features) >= 1024


def renderer_in_context(render: Callable[[int], Any]) -> Callable[[int], Any]:
    """``render`` run under `recipe_context`."""

    def wrapped(index: int) -> Any:
        with recipe_context():
            return render(index)

    return wrapped
