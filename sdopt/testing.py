"""Tiny offline pipelines and fake capabilities, for testing code that uses sdopt.

Everything here builds without a download: random weights, in-memory tokenizers, real
diffusers classes. The pipelines are small enough that a 2-step 64x64 call takes well under
a second on one CPU core, yet they keep the structure of the real models (VAEs with four
resolution levels so ``vae_scale_factor`` is 8, CLIP and T5 text encoders, the real
schedulers), so code that works on them works on the real ones.

Example:
    >>> import torch
    >>> from sdopt.testing import tiny_pipeline, call_kwargs
    >>> pipe = tiny_pipeline("sd")
    >>> image = pipe(**call_kwargs("sd")).images[0]
    >>> image.shape
    (64, 64, 3)
"""

from __future__ import annotations

import dataclasses
import json
import types
from collections.abc import Callable, Mapping
from typing import Any

import torch

from sdopt.capabilities import OPTIONAL_PACKAGES, Capabilities, CudaDevice, detect

FAMILIES: tuple[str, ...] = ("sd", "sdxl", "sd3", "flux", "pixart")
"""Names accepted by :func:`tiny_pipeline` and :func:`call_kwargs`."""

_TEXT_DIM = 32


# --------------------------------------------------------------------------- tokenizers


def _byte_characters() -> list[str]:
    """The 256 printable characters GPT-2-style byte-level BPE maps bytes to."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            codes.append(256 + extra)
            extra += 1
    return [chr(code) for code in codes]


def tiny_clip_tokenizer(model_max_length: int = 77) -> Any:
    """A byte-level CLIP tokenizer built in memory (no merges: one token per byte)."""
    from transformers import CLIPTokenizer

    characters = _byte_characters()
    tokens = characters + [c + "</w>" for c in characters] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=model_max_length)


def tiny_t5_tokenizer(model_max_length: int = 32) -> Any:
    """A character-level T5 (unigram) tokenizer built in memory."""
    from transformers import T5Tokenizer

    pieces = ["<pad>", "</s>", "<unk>", "▁"]
    pieces += [chr(code) for code in range(ord("!"), ord("~") + 1)]
    pieces += ["▁" + chr(code) for code in range(ord("a"), ord("z") + 1)]
    vocab = [(piece, 0.0 if index < 3 else -float(index)) for index, piece in enumerate(pieces)]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=model_max_length)


# --------------------------------------------------------------------------- modules


def _clip_text_encoder(vocab_size: int, *, with_projection: bool) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
        hidden_size=_TEXT_DIM,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=2,
        projection_dim=_TEXT_DIM,
        vocab_size=vocab_size,
        hidden_act="gelu",
    )
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return cls(config)


def _t5_text_encoder(vocab_size: int) -> Any:
    from transformers import T5Config, T5EncoderModel

    config = T5Config(  # type: ignore[call-arg]  # generic PretrainedConfig kwargs
        vocab_size=vocab_size,
        d_model=_TEXT_DIM,
        d_ff=37,
        d_kv=8,
        num_heads=4,
        num_layers=2,
        relative_attention_num_buckets=8,
        dropout_rate=0.0,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    return T5EncoderModel(config)


def _vae(latent_channels: int, **extra: Any) -> Any:
    from diffusers import AutoencoderKL

    # Four resolution levels, so vae_scale_factor is 8 as in the real models.
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=4,
        sample_size=64,
        **extra,
    )


def tiny_autoencoder_tiny(latent_channels: int = 4, *, seed: int = 0) -> Any:
    """A random-weight ``AutoencoderTiny`` with the real downscale factor 8, for ``tiny_vae`` tests.

    Example:
        >>> from sdopt.testing import tiny_autoencoder_tiny
        >>> tiny_autoencoder_tiny(16).config.latent_channels
        16
    """
    from diffusers import AutoencoderTiny

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model: Any = AutoencoderTiny(
            encoder_block_out_channels=(8, 8, 8, 8),
            decoder_block_out_channels=(8, 8, 8, 8),
            num_encoder_blocks=(1, 1, 1, 1),
            num_decoder_blocks=(1, 1, 1, 1),
            latent_channels=latent_channels,
        )
    return model.eval()


def _clip_pair() -> tuple[Any, Any]:
    tokenizer = tiny_clip_tokenizer()
    return tokenizer, _clip_text_encoder(len(tokenizer), with_projection=False)


def _build_sd() -> Any:
    from diffusers import PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    unet = UNet2DConditionModel(
        block_out_channels=(8, 16),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=_TEXT_DIM,
        attention_head_dim=4,
        norm_num_groups=4,
    )
    tokenizer, text_encoder = _clip_pair()
    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        skip_prk_steps=True,
        steps_offset=1,
    )
    return StableDiffusionPipeline(
        unet=unet,
        vae=_vae(4),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )


def _build_sdxl() -> Any:
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    unet = UNet2DConditionModel(
        block_out_channels=(8, 16),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=6 * 8 + _TEXT_DIM,
        cross_attention_dim=2 * _TEXT_DIM,
        norm_num_groups=4,
    )
    tokenizer, text_encoder = _clip_pair()
    tokenizer_2 = tiny_clip_tokenizer()
    text_encoder_2 = _clip_text_encoder(len(tokenizer_2), with_projection=True)
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        steps_offset=1,
        beta_schedule="scaled_linear",
        timestep_spacing="leading",
    )
    return StableDiffusionXLPipeline(
        unet=unet,
        vae=_vae(4, force_upcast=True),
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        scheduler=scheduler,
        image_encoder=None,
        feature_extractor=None,
    )


def _build_sd3() -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    transformer = SD3Transformer2DModel(
        sample_size=8,
        patch_size=1,
        in_channels=4,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=4,
        caption_projection_dim=_TEXT_DIM,
        joint_attention_dim=_TEXT_DIM,
        pooled_projection_dim=2 * _TEXT_DIM,
        out_channels=4,
    )
    tokenizer, tokenizer_2 = tiny_clip_tokenizer(), tiny_clip_tokenizer()
    text_encoder = _clip_text_encoder(len(tokenizer), with_projection=True)
    text_encoder_2 = _clip_text_encoder(len(tokenizer_2), with_projection=True)
    tokenizer_3 = tiny_t5_tokenizer()
    vae = _vae(4, shift_factor=0.0609, scaling_factor=1.5035, use_quant_conv=False, use_post_quant_conv=False)
    return StableDiffusion3Pipeline(
        transformer=transformer,
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        text_encoder_3=_t5_text_encoder(len(tokenizer_3)),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        tokenizer_3=tokenizer_3,
        scheduler=FlowMatchEulerDiscreteScheduler(),
    )


def _build_flux() -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=_TEXT_DIM,
        pooled_projection_dim=_TEXT_DIM,
        axes_dims_rope=(4, 4, 8),
    )
    tokenizer, text_encoder = _clip_pair()
    tokenizer_2 = tiny_t5_tokenizer()
    # Flux packs 2x2 latent patches: 1 latent channel x 4 = the transformer's 4 input channels.
    vae = _vae(1, shift_factor=0.0609, scaling_factor=1.5035, use_quant_conv=False, use_post_quant_conv=False)
    return FluxPipeline(
        transformer=transformer,
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=_t5_text_encoder(len(tokenizer_2)),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        scheduler=FlowMatchEulerDiscreteScheduler(),
    )


def _build_pixart() -> Any:
    from diffusers import DDIMScheduler, PixArtAlphaPipeline, PixArtTransformer2DModel

    transformer = PixArtTransformer2DModel(
        sample_size=8,
        num_layers=2,
        patch_size=2,
        attention_head_dim=8,
        num_attention_heads=3,
        caption_channels=_TEXT_DIM,
        in_channels=4,
        cross_attention_dim=24,
        out_channels=8,
        attention_bias=True,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
    )
    tokenizer = tiny_t5_tokenizer()
    return PixArtAlphaPipeline(
        transformer=transformer,
        vae=_vae(4),
        text_encoder=_t5_text_encoder(len(tokenizer)),
        tokenizer=tokenizer,
        scheduler=DDIMScheduler(),
    )


_BUILDERS: dict[str, Callable[[], Any]] = {
    "sd": _build_sd,
    "sdxl": _build_sdxl,
    "sd3": _build_sd3,
    "flux": _build_flux,
    "pixart": _build_pixart,
}


def _check_family(family: str) -> None:
    if family not in _BUILDERS:
        raise ValueError(f"unknown tiny pipeline family {family!r}; choose one of: {', '.join(FAMILIES)}")


def tiny_pipeline(family: str = "sd", *, seed: int = 0) -> Any:
    """Build a tiny random-weight pipeline of ``family`` offline, in eval mode, on the CPU.

    ``family`` is one of :data:`FAMILIES`. The same ``seed`` gives the same weights.

    Example:
        >>> from sdopt.testing import tiny_pipeline
        >>> type(tiny_pipeline("flux")).__name__
        'FluxPipeline'
    """
    _check_family(family)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        pipe = _BUILDERS[family]()
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            # Constructors leave modules in train mode; dropout would make outputs random.
            component.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def call_kwargs(family: str = "sd", *, seed: int = 0, steps: int = 2, size: int = 64) -> dict[str, Any]:
    """Keyword arguments for a quick deterministic call of a :func:`tiny_pipeline`.

    Returns a fresh dict (with a fresh seeded ``generator``) on each call, so two calls with
    the same arguments give the same image.

    Example:
        >>> from sdopt.testing import tiny_pipeline, call_kwargs
        >>> pipe = tiny_pipeline("pixart")
        >>> pipe(**call_kwargs("pixart")).images[0].shape
        (64, 64, 3)
    """
    _check_family(family)
    kwargs: dict[str, Any] = {
        "prompt": "a tiny red fox",
        "num_inference_steps": steps,
        "height": size,
        "width": size,
        "generator": torch.Generator("cpu").manual_seed(seed),
        "output_type": "np",
    }
    if family in ("sd3", "flux", "pixart"):
        kwargs["max_sequence_length"] = 16
    if family == "pixart":
        kwargs["use_resolution_binning"] = False
        kwargs["clean_caption"] = False
    if family == "flux":
        kwargs["guidance_scale"] = 3.5
    return kwargs


def run_pipeline(pipe: Any, family: str, **overrides: Any) -> Any:
    """Call ``pipe`` with :func:`call_kwargs` (plus ``overrides``) and return the image array."""
    kwargs = call_kwargs(family)
    kwargs.update(overrides)
    with torch.inference_mode():
        return pipe(**kwargs).images


# --------------------------------------------------------------------------- state comparison


def pipeline_state(pipe: Any) -> dict[str, Any]:
    """A snapshot of everything an optimization may change, for exact before/after comparisons.

    Covers, per component: the module object's identity and class, every parameter and buffer
    (name, dtype, device, shape, stride and a copy of the values), attention processor classes
    and identities, forward hooks and diffusers hook-registry entries, and attribute flags such
    as ``use_slicing``; plus the scheduler's class and config and diffusers' process-wide
    attention backend. Compare two snapshots with :func:`state_differences`.

    Example:
        >>> from sdopt.testing import tiny_pipeline, pipeline_state, state_differences
        >>> pipe = tiny_pipeline("sd")
        >>> before = pipeline_state(pipe)
        >>> state_differences(before, pipeline_state(pipe))
        []
    """
    state: dict[str, Any] = {
        "process": _process_state(),
        "pipeline_config": json.dumps(dict(pipe.config), sort_keys=True, default=repr),
        "pipeline_class": (type(pipe).__qualname__, id(type(pipe))),
    }
    for name, component in pipe.components.items():
        if isinstance(component, torch.nn.Module):
            state[name] = _module_state(component)
        elif component is None or isinstance(component, (str, int, float, bool)):
            state[name] = component
        else:
            config = getattr(component, "config", None)
            state[name] = {
                "id": id(component),
                "class": type(component).__name__,
                "config": json.dumps(dict(config), sort_keys=True, default=repr) if config is not None else None,
            }
    return state


def _process_state() -> dict[str, Any]:
    try:
        from diffusers.models.attention_dispatch import _AttentionBackendRegistry

        backend = str(_AttentionBackendRegistry.get_active_backend()[0])
    except Exception:  # older diffusers without the dispatcher
        backend = None
    return {"attention_backend": backend}


_FLAG_ATTRIBUTES = (
    "use_slicing",
    "use_tiling",
    "tile_sample_min_size",
    "tile_latent_min_size",
    "tile_overlap_factor",
    "fused_projections",
    "original_attn_processors",
    "sliceable_head_dim",
)


def _module_state(module: torch.nn.Module) -> dict[str, Any]:
    tensors = {}
    for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
        tensors[name] = (
            tensor.dtype,
            tensor.device.type,
            tuple(tensor.shape),
            tensor.stride(),
            tensor.detach().to("cpu", copy=True),
        )
    submodules = {}
    for name, sub in module.named_modules():
        entry: dict[str, Any] = {"class": type(sub).__name__, "id": id(sub)}
        processor = getattr(sub, "processor", None)
        if processor is not None:
            entry["processor"] = (type(processor).__name__, id(processor))
        hooks = (
            len(sub._forward_hooks),
            len(sub._forward_pre_hooks),
            type(getattr(sub, "_diffusers_hook", None)).__name__,
            tuple(getattr(getattr(sub, "_diffusers_hook", None), "hooks", {}) or ()),
            getattr(sub, "_hf_hook", None) is not None,
        )
        entry["hooks"] = hooks
        entry["instance_functions"] = sorted(
            key for key, value in sub.__dict__.items() if isinstance(value, (types.FunctionType, types.MethodType))
        )
        for attribute in _FLAG_ATTRIBUTES:
            if attribute in sub.__dict__:
                entry[attribute] = repr(sub.__dict__[attribute])
        submodules[name] = entry
    return {
        "id": id(module),
        "class": type(module).__name__,
        "training": module.training,
        "tensors": tensors,
        "modules": submodules,
    }


def state_differences(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    """Human-readable differences between two :func:`pipeline_state` snapshots ([] if identical)."""
    differences: list[str] = []
    _diff("", before, after, differences)
    return differences


def _diff(path: str, a: Any, b: Any, out: list[str]) -> None:
    if len(out) > 50:
        return
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        same = (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and torch.equal(a, b)
        )
        if not same:
            out.append(f"{path}: tensor values differ")
        return
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        for key in sorted(set(a) | set(b), key=str):
            where = f"{path}.{key}" if path else str(key)
            if key not in a:
                out.append(f"{where}: added")
            elif key not in b:
                out.append(f"{where}: removed")
            else:
                _diff(where, a[key], b[key], out)
        return
    if isinstance(a, tuple) and isinstance(b, tuple) and len(a) == len(b):
        for index, (x, y) in enumerate(zip(a, b, strict=True)):
            _diff(f"{path}[{index}]", x, y, out)
        return
    if a != b:
        out.append(f"{path}: {a!r} -> {b!r}")


# --------------------------------------------------------------------------- capabilities

_X86_AVX2 = ("avx2", "fma", "f16c")
_X86_AMX = (*_X86_AVX2, "avx512f", "avx512_bf16", "avx512_fp16", "avx512_vnni", "amx_bf16", "amx_int8", "amx_tile")

# name: (device, cpu model, cpu flags, ram GB, GPU (name, capability, VRAM GB) or None, GPU in the torch build)
_PROFILES: dict[str, tuple[str, str, tuple[str, ...], float, tuple[str, tuple[int, int], float] | None, bool]] = {
    "cpu-avx2": ("cpu", "AMD Ryzen 7 3700X (AVX2, no bf16 units)", _X86_AVX2, 32, None, True),
    "cpu-amx": ("cpu", "Intel Xeon (Sapphire Rapids, AMX)", _X86_AMX, 64, None, True),
    "apple-m2-16gb": ("mps", "Apple M2", ("asimd", "neon", "asimdhp", "bf16", "i8mm"), 16, None, True),
    "t4-16gb": ("cuda", "Intel Xeon", _X86_AVX2, 32, ("Tesla T4", (7, 5), 15.6), True),
    "gtx1060-6gb": ("cuda", "Intel Core i7", _X86_AVX2, 16, ("NVIDIA GeForce GTX 1060 6GB", (6, 1), 6.0), True),
    "rtx3060ti-8gb": ("cuda", "AMD Ryzen 5", _X86_AVX2, 32, ("NVIDIA GeForce RTX 3060 Ti", (8, 6), 8.0), True),
    "rtx4090-24gb": ("cuda", "AMD Ryzen 9", _X86_AVX2, 64, ("NVIDIA GeForce RTX 4090", (8, 9), 24.0), True),
    "a100-80gb": ("cuda", "AMD EPYC", _X86_AVX2, 256, ("NVIDIA A100-SXM4-80GB", (8, 0), 80.0), True),
    "h100-80gb": ("cuda", "Intel Xeon (AMX)", _X86_AMX, 512, ("NVIDIA H100 80GB HBM3", (9, 0), 80.0), True),
    "rtx5090-no-kernels": ("cuda", "AMD Ryzen 9", _X86_AVX2, 64, ("NVIDIA GeForce RTX 5090", (12, 0), 32.0), False),
}
PROFILES: tuple[str, ...] = tuple(_PROFILES)
"""Named machines for :func:`fake_capabilities`."""


def fake_capabilities(
    profile: str = "cpu-avx2",
    *,
    bf16_accelerated: bool | None = None,
    cuda_capability: tuple[int, int] | None = None,
    vram_gb: float | None = None,
    packages: Mapping[str, bool] | None = None,
    **overrides: Any,
) -> Capabilities:
    """Capabilities of an imaginary machine, to test hardware-dependent choices anywhere.

    ``profile`` is one of :data:`PROFILES` (``cpu-avx2``, ``cpu-amx``, ``apple-m2-16gb``,
    ``t4-16gb``, ``gtx1060-6gb``, ``rtx3060ti-8gb``, ``rtx4090-24gb``, ``a100-80gb``,
    ``h100-80gb``, ``rtx5090-no-kernels``: an sm_120 GPU visible to a torch build made for
    sm_50..sm_90, so unusable, and the plan falls back to the CPU), or a bare device type
    ("cpu", "cuda" = an RTX 4090, "mps") to be adjusted with the keywords: whether the CPU
    accelerates bf16, the GPU's compute capability and memory, which optional packages count
    as installed and usable. Any other :class:`~sdopt.capabilities.Capabilities` field can be
    overridden by name. Versions are this machine's.

    Example:
        >>> from sdopt.testing import fake_capabilities
        >>> caps = fake_capabilities("t4-16gb")
        >>> caps.device, caps.half_dtype, caps.gpu.arch
        ('cuda', 'float16', 'sm_75')
        >>> fake_capabilities("rtx5090-no-kernels").device
        'cpu'
    """
    from sdopt.capabilities import MpsInfo, _cpu_info, choose_device, no_kernel_fix

    base = {"cpu": "cpu-avx2", "cuda": "rtx4090-24gb", "mps": "apple-m2-16gb"}.get(profile, profile)
    if base not in _PROFILES:
        raise ValueError(f"unknown capabilities profile {profile!r}; choose one of: {', '.join(PROFILES)}")
    device, cpu_model, flags, ram, gpu_spec, in_build = _PROFILES[base]
    flag_set = set(flags)
    if bf16_accelerated is not None:
        flag_set = set(_X86_AMX if bf16_accelerated else _X86_AVX2)
    machine = "arm64" if device == "mps" else "x86_64"
    cpu = _cpu_info(cpu_model, flag_set, 8, machine)
    cpu = dataclasses.replace(cpu, logical_cores=16)
    cuda: tuple[CudaDevice, ...] = ()
    if gpu_spec is not None:
        name, capability, memory = gpu_spec
        gpu = CudaDevice.from_capability(0, name, cuda_capability or capability, vram_gb or memory)
        gpu = dataclasses.replace(gpu, free_memory_gb=gpu.total_memory_gb * 0.9)
        if not in_build:
            fix = no_kernel_fix(gpu.capability)
            reason = f"{gpu.arch} has no kernels in this torch build (built for sm_50..sm_90); {fix}"
            gpu = dataclasses.replace(gpu, arch_in_build=False, usable=False, reason=reason, free_memory_gb=None)
        cuda = (gpu,)
    mps = MpsInfo(True, True, "", ram) if device == "mps" else MpsInfo()
    chosen, reason, notes = choose_device(cuda, mps, False)
    package_map = {
        name: {"installed": False, "version": None, "usable": False, "reason": "not installed"}
        for name in OPTIONAL_PACKAGES
    }
    for name, usable in (packages or {}).items():
        package_map[name] = {"installed": True, "version": "0.0", "usable": usable, "reason": "" if usable else "fake"}
    caps = Capabilities(
        versions=dict(detect().versions),
        device=chosen,
        device_reason=reason,
        cpu=cpu,
        cuda=cuda,
        mps=mps,
        ram_total_gb=float(ram),
        ram_available_gb=float(ram) * 0.8,
        packages=package_map,
        cxx_compiler="/usr/bin/g++",
        warnings=notes,
        profile=profile,
    )
    return dataclasses.replace(caps, **overrides) if overrides else caps


__all__ = [
    "FAMILIES",
    "PROFILES",
    "call_kwargs",
    "fake_capabilities",
    "pipeline_state",
    "run_pipeline",
    "state_differences",
    "tiny_autoencoder_tiny",
    "tiny_clip_tokenizer",
    "tiny_pipeline",
    "tiny_t5_tokenizer",
]
