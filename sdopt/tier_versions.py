"""The published tier versions: data only, an ordered tuple of entries per version.

A published version is never edited: a change is a new version, composed from the one before with
`without` and `insert_before`, with the measurement that justifies it in a comment and in each entry's
``why``. `sdopt.tiers` looks them up; ``tests/snapshots/tiers.json`` keeps every version as published.
"""

from __future__ import annotations

from dataclasses import replace

from sdopt.presets import Entry, Preset
from sdopt.requirements import Requirements


def without(entries: tuple[Entry, ...], name: str, *, devices: tuple[str, ...] | None = None) -> tuple[Entry, ...]:
    """``entries`` less those naming ``name`` (with ``devices``: only those whose condition is exactly
    those devices).

    Examples:
        >>> from sdopt.presets import Entry
        >>> from sdopt.tier_versions import without
        >>> [e.name for e in without((Entry("sdpa"), Entry("scheduler")), "scheduler")]
        ['sdpa']
    """

    def dropped(entry: Entry) -> bool:
        if entry.name != name:
            return False
        return devices is None or (entry.when is not None and entry.when.devices == devices)

    return tuple(entry for entry in entries if not dropped(entry))


def insert_before(entries: tuple[Entry, ...], name: str, *new: Entry) -> tuple[Entry, ...]:
    """``entries`` with ``new`` inserted before the first entry naming ``name`` (which must be there).

    Examples:
        >>> from sdopt.presets import Entry
        >>> from sdopt.tier_versions import insert_before
        >>> [e.name for e in insert_before((Entry("sdpa"), Entry("scheduler")), "scheduler", Entry("tiny_vae"))]
        ['sdpa', 'tiny_vae', 'scheduler']
    """
    at = next(index for index, entry in enumerate(entries) if entry.name == name)
    return (*entries[:at], *new, *entries[at:])


_CUDA = Requirements(devices=("cuda",))
_SHORT_MEMORY = Requirements(max_memory_gb=8)
_DISTILLED = Requirements(distillations=("lcm", "adversarial"))

_CHANNELS_LAST_BF16_CPU = Entry(
    "channels_last",
    when=Requirements(devices=("cpu",), bf16_accelerated=True),
    why="oneDNN's bf16 convolutions prefer NHWC; in float32 on this VM it measured slower per UNet step",
)

_CONSERVATIVE_1 = (
    Entry(
        "vae_fp16_fix",
        why="SDXL's VAE overflows in float16 (black images); diffusers' docs recommend the fp16-fix VAE",
    ),
    Entry(
        "half_precision",
        why="bf16 + channels-last: 43.0 s -> 11.1 s per 4-step SD1.5 image (PSNR 47 dB) on a 2-core AMX CPU "
        "(diffusers-notes.md); bf16 measured 1.5x slower than fp32 on a CPU without AMX (this VM), so the "
        "dtype follows the hardware",
    ),
    Entry(
        "attention_backend",
        when=_CUDA,
        why="diffusers' attention dispatcher: flash attention where it works (diffusers docs, attention backends)",
    ),
    Entry("sdpa", why="PyTorch SDPA is diffusers' default since 0.20; acts only where classic processors are set"),
    Entry(
        "channels_last",
        when=Requirements(devices=("cuda", "mps")),
        why="tensor-core convolutions want NHWC (PyTorch memory-format tutorial, diffusers speed docs)",
    ),
    _CHANNELS_LAST_BF16_CPU,
    Entry(
        "fuse_qkv",
        when=_CUDA,
        why="fewer, larger GEMMs on GPUs (diffusers' SDXL speed-up recipe); no gain on CPU",
    ),
    Entry("vae_tiling", when=_SHORT_MEMORY, why="decoding 1024 px in one piece needs several GB"),
)

_BALANCED_1 = (
    Entry(
        "attention_slicing",
        when=Requirements(devices=("mps",)),
        why="diffusers' advice for Apple GPUs; listed first so it wins the attention group there",
    ),
    *_CONSERVATIVE_1,
    Entry(
        "scheduler",
        why="DPM-Solver++ 2M matches 50 DDIM/PNDM steps in 20-25 (Lu et al. 2022; diffusers' scheduler docs); "
        "the caller's step count is kept",
    ),
    Entry(
        "step_budget",
        when=_DISTILLED,
        why="Turbo/Lightning/LCM models are distilled for ~4 steps; their pipelines default to 50",
    ),
    Entry(
        "guidance",
        {"mode": "off"},
        when=Requirements(distillations=("adversarial",)),
        why="SD/SDXL-Turbo are trained without CFG (their model cards pass guidance_scale=0.0); halves the work",
    ),
    Entry(
        "quantize_int8",
        when=Requirements(devices=("cpu",), bf16_accelerated=False),
        why="dynamic int8 Linear layers: 1.06-1.2x per SD1.5 UNet step over float32 on this CPU without bf16 "
        "units; see benchmarks/RESULTS.md for the image-level figures",
    ),
    Entry(
        "quantize_int8",
        when=_CUDA,
        why="torchao int8 + compile: part of the published SDXL recipe (7.36 s -> 2.43 s on an A100)",
    ),
    Entry(
        "torch_compile",
        when=_CUDA,
        why="regional compile: the same speed as full compile with a fraction of the first-call cost (diffusers docs)",
    ),
    Entry("vae_slicing", when=_SHORT_MEMORY, why="batches decode one image at a time"),
    Entry("model_offload", why="only when the components do not all fit in free device memory (by budget)"),
)

# balanced@2: faithful at every step count. balanced@1's PNDM -> DPM-Solver++ swap was all of its
# drift at 4 steps (29.5 dB against the untouched pipeline; its numerical steps alone: 46.7 dB) for
# ~5% at 20 steps (42.3 dB there): a call-time rule applying it from some step count would still
# buy ~5%, so the swap moves to fast@2, where fewer steps are the point. The VAE decodes
# channels-last on CPUs whose float32 convolutions prefer it (the UNet does not).
_BALANCED_2 = (
    *without(_BALANCED_1, "scheduler"),
    Entry(
        "channels_last",
        {"components": ["vae"]},
        when=Requirements(devices=("cpu",), bf16_accelerated=False),
        why="float32 VAE decode 13.0-13.6 s -> 10.2-11.8 s channels-last on a CPU without bf16 units, while the "
        "UNet measured slower (benchmarks/RESULTS.md)",
    ),
)

_SOLVER_SWAP = Entry(
    "scheduler",
    why="DPM-Solver++ 2M matches 50 DDIM/PNDM steps in 20-25 (Lu et al. 2022); another trajectory from the same "
    "latents: 29.5 dB against PNDM at 4 steps, 42.3 dB at 20 (benchmarks/RESULTS.md), so it belongs with fewer steps",
)

# What fast adds to balanced.
_FAST_OWN = (
    Entry(
        "tiny_vae",
        why="TAESD decode 20.0 s -> 3.1 s for an fp32 SD1.5-size probe here; slightly softer images",
    ),
    Entry("step_budget", why="20 steps on CPU, 25 elsewhere, 4 for distilled models: close to 50 with DPM-Solver++"),
    Entry(
        "guidance",
        {"stop_at": 0.6},
        why="CFG truncation: the last 40% of steps run one batch instead of two (diffusers' dynamic-CFG recipe)",
    ),
    Entry(
        "feature_cache",
        why="DeepCache (Ma et al. 2023) on UNets, diffusers' first-block cache on DiTs: deep blocks skipped on "
        "2 of 3 steps",
    ),
)
_FAST_1 = (*_BALANCED_1, *_FAST_OWN)

# fast@2: balanced@2 plus the solver swap balanced@1 carried, then fast's own steps.
_FAST_2 = (*_BALANCED_2, _SOLVER_SWAP, *_FAST_OWN)

# fast@3: static int8 (PT2E, oneDNN VNNI kernels) for UNets of real size on x86 CPUs without AMX,
# where neither bf16 nor dynamic int8 was the lever: the SD1.5 UNet call (batch 2, 64x64, 2 threads)
# took 4.4-5.0 s in int8 against 11.1-11.4 s in float32 and 6.5-6.8 s in bf16 on this AVX512-BF16
# EPYC. Its drift, 36.9 dB PSNR against float32 after 4 steps (benchmarks/RESULTS.md), is below
# balanced's 40 dB floor, so balanced stays @2 and int8 starts at fast. It is listed before
# half_precision, which it wins (the denoiser stays float32 for calibration), and before
# feature_cache, which it wins too (the UNet runs as one compiled graph); dynamic int8 (torch.ao,
# deprecated) leaves the CPU tiers. Small denoisers are left out: their calls are too short to pay
# back a build of a minute or more.
_STATIC_INT8 = Entry(
    "static_int8",
    when=Requirements(devices=("cpu",), cpu_amx=False, denoiser_kinds=("unet",), min_denoiser_mparams=300),
    why="SD1.5 UNet call 4.4-5.0 s int8 vs 11.1-11.4 s float32 and 6.5-6.8 s bf16 on a 2-core AVX512-VNNI CPU "
    "without AMX, 36.9 dB after 4 steps; first call at a new shape: float32 + a build of minutes, cached on disk "
    "(benchmarks/RESULTS.md)",
)


# static_int8 ahead of half_precision, and the CPU's dynamic int8 out.
_FAST_3 = insert_before(without(_FAST_2, "quantize_int8", devices=("cpu",)), "half_precision", _STATIC_INT8)

_RESOLUTION = Entry("resolution", {"scale": 0.75}, why="56% of the denoising work, upscaled back; clearly lossy")

_ULTRA_1 = (
    *_FAST_1,
    _RESOLUTION,
    Entry(
        "torch_compile",
        {"accept_cpu_first_call": True},
        why="on CPU too: 1.35x per step in bf16 with frozen weights on an AMX host (SD1.5 UNet); ~1.0x in "
        "float32 without AMX, first call +40 s cold / +11 s warm (benchmarks/RESULTS.md)",
    ),
)
# ultra@2: on a CPU without bf16 units torch_compile gains nothing per step (float32, measured) but
# conflicts with feature_cache, which halves the average UNet call: @1 traded the cache for it.
_ULTRA_2_COMPILE = (
    Entry(
        "torch_compile",
        {"accept_cpu_first_call": True},
        when=Requirements(devices=("mps", "xpu")),
        why="as in ultra@1 on these devices (CUDA gets it from balanced); chosen over feature caching",
    ),
    Entry(
        "torch_compile",
        {"accept_cpu_first_call": True},
        when=Requirements(devices=("cpu",), bf16_accelerated=True),
        why="1.35x per step in bf16 with frozen weights on an AMX host (SD1.5 UNet); in float32 without AMX "
        "~1.0x (benchmarks/RESULTS.md), so there feature caching is kept instead",
    ),
)
_ULTRA_2 = (*_FAST_1, _RESOLUTION, *_ULTRA_2_COMPILE)

# ultra@3: step distillation first (it wins the solver swap, the step budget and CFG truncation),
# then fast@3 (static int8 on CPUs without AMX), the resolution scale and ultra@2's compile entries.
_ULTRA_3 = (
    Entry(
        "distill_lora",
        why="LCM-LoRA (Luo et al. 2023): 4 steps without CFG (batch 1) instead of 20-50 with it; where the "
        "LoRA is local, cached or downloadable",
    ),
    *_FAST_3,
    _RESOLUTION,
    *_ULTRA_2_COMPILE,
)

# Version 3 of balanced (4 of fast and ultra, 2 of conservative): every CUDA entry rests on a GPU
# measurement (issue 26). On an H200 (SDXL architecture, 1024x1024, 30 steps, fp16; benchmarks/RESULTS.md,
# "H200, December 2026"): untouched fp16 + SDPA 1.99 s per image; balanced@2 5.45 s with a 263 s first
# call, all of it torchao's dynamic int8 (regional compile does not make it pay at batch 1, and it made
# fuse_qkv fail); balanced@2 without int8 1.54 s (1.29x); fast@3 without int8 1.83 s, slower than
# balanced. What stays on CUDA is exactly that measured 1.29x set; nothing else is added without a figure.
_H200_SDXL = "SDXL 1024/30 on an H200: 1.54 s vs 1.99 s untouched fp16 as part of balanced@2 less int8 (RESULTS.md)"

_CONSERVATIVE_2 = (
    _CONSERVATIVE_1[0],  # vae_fp16_fix
    _CONSERVATIVE_1[1],  # half_precision
    # attention_backend leaves CUDA: a no-op on UNets (the measured set), a guess elsewhere.
    Entry("sdpa", why="PyTorch SDPA is diffusers' default since 0.20; acts only where classic processors are set"),
    # channels_last leaves MPS: nothing measured there.
    Entry("channels_last", when=_CUDA, why=f"tensor-core convolutions want NHWC; {_H200_SDXL}"),
    _CHANNELS_LAST_BF16_CPU,
    Entry("fuse_qkv", when=_CUDA, why=f"fewer, larger GEMMs; {_H200_SDXL}"),
    Entry("vae_tiling", when=_SHORT_MEMORY, why="decoding 1024 px in one piece needs several GB"),
)

# balanced@3: conservative@2, then balanced@2's own steps less torchao int8 on CUDA (2.1x slower than
# untouched fp16 on the H200, see above), regional compile citing the measured set.
_BALANCED_OWN_2 = _BALANCED_2[1 + len(_CONSERVATIVE_1) :]  # after MPS slicing and conservative@1
_REGIONAL_COMPILE = Entry(
    "torch_compile",
    when=_CUDA,
    why=f"regional compile (repeated blocks): a fraction of full compile's first call; {_H200_SDXL}",
)
_BALANCED_3 = (
    _BALANCED_2[0],  # attention_slicing on MPS (diffusers' memory advice for Apple GPUs)
    *_CONSERVATIVE_2,
    *(
        _REGIONAL_COMPILE if entry.name == "torch_compile" else entry
        for entry in without(_BALANCED_OWN_2, "quantize_int8", devices=("cuda",))
    ),
)

# fast@4: balanced@3, the solver swap and fast's own steps, CFG truncation off CUDA: on the H200 fast@3
# less int8 (its CFG truncation running under regional compile, the batch changing from 2 to 1 at 60% of
# the steps) took 1.83 s against balanced's 1.54 s. Until truncation is measured to pay under compile on
# a GPU it stays where it was measured (CPUs).
_CFG_TRUNCATION_OFF_CUDA = Entry(
    "guidance",
    {"stop_at": 0.6},
    when=Requirements(devices=("cpu", "mps", "xpu")),
    why="CFG truncation: the last 40% of steps run one batch instead of two (diffusers' dynamic-CFG recipe); "
    "not on CUDA, where fast@3 with it under compile measured slower than balanced on an H200 (RESULTS.md)",
)
_FAST_OWN_4 = tuple(_CFG_TRUNCATION_OFF_CUDA if entry.name == "guidance" else entry for entry in _FAST_OWN)
_FAST_4 = insert_before(
    without((*_BALANCED_3, _SOLVER_SWAP, *_FAST_OWN_4), "quantize_int8", devices=("cpu",)),
    "half_precision",
    _STATIC_INT8,
)

# ultra@4: ultra@3 built on fast@4.
_ULTRA_4 = (_ULTRA_3[0], *_FAST_4, _RESOLUTION, *_ULTRA_2_COMPILE)

# balanced@4 (fast@5, ultra@5): OpenVINO's CPU runtime runs the UNet and the VAE decoder on the CPU
# classes where it was measured to beat what it displaces (issue 29), listed before half precision,
# dynamic and static int8 and feature caching, which it wins. Figures (benchmarks/RESULTS.md, "OpenVINO's
# runtime inside the pipeline"): SD1.5 at 512x512, 4 steps, 2 threads. On a 2-core AMD EPYC with
# AVX512-BF16 (bf16 measured faster than float32, no AMX): float32 41.4 s, balanced@3 (PyTorch bf16)
# 21.5 s at 48.5 dB, OpenVINO bf16 13.7 s at 47.6 dB (trained-sd: prompt accuracy unchanged), fast@4
# (static int8) 8.6 s, fast@5 6.8 s. On an AVX2-only EPYC, where balanced@3 has no compute lever,
# OpenVINO f32 ran the pipeline 1.38x faster than PyTorch float32 and 1.27x faster than balanced@2.
# Left out where it lost or was not measured: OpenVINO f32 on an AVX512-BF16 Xeon whose bf16 is not
# accelerated (1.04x per UNet call, where dynamic int8 made balanced@2 1.32x OpenVINO f32 and static
# int8 is fast's lever), AMX, AVX-512 without bf16, DiT denoisers, and fast/ultra on AVX2 (against
# feature caching, unmeasured). Without `sdopt[openvino]` the entry is skipped with the install hint and
# the steps after it plan as in the previous version.
# Since openvino_runtime's version 2 (December 6) the step no longer displaces half precision: these same
# entries plan half_precision before it, the UNet is converted from bfloat16 weights (smaller in RAM, a
# shape OpenVINO refuses runs PyTorch's bfloat16 instead of float32), measured in RESULTS.md ("OpenVINO
# over half precision"). Presets frozen with the step's version 1 say so when loaded.
_OPENVINO_BF16 = Entry(
    "openvino_runtime",
    {"precision": "bf16"},
    when=Requirements(devices=("cpu",), cpu_classes=("avx512-bf16",), bf16_accelerated=True, denoiser_kinds=("unet",)),
    why="SD1.5 512/4 on a 2-core AVX512-BF16 EPYC: 13.7 s at 47.6 dB vs balanced@3's PyTorch bf16 21.5 s at "
    "48.5 dB (float32 41.4 s); fast@5 6.8 s vs fast@4's static int8 8.6 s; trained-sd keeps its prompt "
    "accuracy (RESULTS.md)",
)
_OPENVINO_F32_AVX2 = Entry(
    "openvino_runtime",
    when=Requirements(devices=("cpu",), cpu_classes=("avx2",), denoiser_kinds=("unet",)),
    why="SD1.5 512/4 on an AVX2-only EPYC: OpenVINO f32 190.2 s vs PyTorch float32 261.8 s and balanced@2 "
    "241.0 s; float32 results (86.8 dB vs PyTorch on an EPYC with AVX-512) (RESULTS.md)",
)
_BALANCED_4 = insert_before(_BALANCED_3, "half_precision", _OPENVINO_BF16, _OPENVINO_F32_AVX2)
_FAST_5 = insert_before(_FAST_4, "static_int8", _OPENVINO_BF16)
_ULTRA_5 = (_ULTRA_3[0], *_FAST_5, _RESOLUTION, *_ULTRA_2_COMPILE)

# fast@6 (ultra@6): on AVX512-BF16 the UNet's convolutions and linear layers run int8 inside OpenVINO
# (openvino_runtime's int8: static activation ranges from the first pipeline call, FakeQuantize layers,
# the rest bf16). SD1.5's UNet alone (batch 2, 64x64, 2 threads, AVX512-BF16 EPYC): 1.61 s a call against
# 2.20 s for OpenVINO bf16, 27.2 dB against PyTorch bf16 on random weights (bf16 alone: 32.9 dB against
# PyTorch float32). On
# trained-sd every layer in int8 kept prompt accuracy 0.958 (untouched 0.979) and domain FID 2343 (2347),
# within the seed noise floor (0.125, 599), at 37.0 dB PSNR to the untouched images: under balanced's
# 40 dB, so int8 goes to fast and ultra (as static_int8 did), not balanced. ultra calibrates after the
# LCM-LoRA fuses. Whole-pipeline figures: benchmarks/RESULTS.md, "int8 inside OpenVINO". Only for UNets up
# to SD1.5's size, where it was measured: the int8 trace holds a float32 copy of the weights (+3.0 GB on
# SD1.5, ~10 GB for SDXL's UNet), so larger UNets keep fast@5's OpenVINO bf16.
_UNET_MEASURED_MPARAMS = 1000  # SD1.5's UNet: 860M
_OPENVINO_INT8 = Entry(
    "openvino_runtime",
    {"precision": "bf16", "int8": True},
    when=replace(_OPENVINO_BF16.when, max_denoiser_mparams=_UNET_MEASURED_MPARAMS),
    why="SD1.5 512/20 on a 2-core AVX512-BF16 EPYC: 23.3 s with int8 at both batch sizes (int8 floor lowered to "
    "15 dB for random weights), 31.4 s with int8 at batch 1 only (the 25 dB check refused batch 2 there), "
    "3.74x and 2.77x OpenVINO static f32 (fast@5: 2.59x); trained-sd keeps prompt accuracy and FID within the "
    "seed noise floor (RESULTS.md, 'int8 inside OpenVINO')",
)
_OPENVINO_BF16_LARGE = Entry(
    "openvino_runtime",
    _OPENVINO_BF16.config,
    when=replace(_OPENVINO_BF16.when, min_denoiser_mparams=_UNET_MEASURED_MPARAMS),
    why=f"{_OPENVINO_BF16.why}; int8 unmeasured at this size",
)
_FAST_6 = insert_before(
    tuple(_OPENVINO_INT8 if entry is _OPENVINO_BF16 else entry for entry in _FAST_5),
    "static_int8",
    _OPENVINO_BF16_LARGE,
)
_ULTRA_6 = (_ULTRA_3[0], *_FAST_6, _RESOLUTION, *_ULTRA_2_COMPILE)

# fast@7: on AVX512-BF16, for UNets up to SD1.5's size, OpenVINO converts the UNet block by block, so
# feature caching (DeepCache, interval 3: fast's own entry, which fast@6 lost to OpenVINO's whole-UNet
# conversion) skips the deep blocks on 2 of 3 steps. SD1.5's UNet alone (bf16, batch 2, 64x64, 2 threads):
# OpenVINO whole 2.23-2.39 s a call, block by block 2.39-2.56 s, with the cache 2.34-2.52 s on a full step
# and 1.09-1.17 s on the others (~1.47x over three steps). Whole pipeline at 20 steps: 23.2 s, 4.27x
# OpenVINO static f32 in one run (fast@6: 2.77x in another). trained-sd: prompt accuracy 0.979 (untouched
# 0.979), FID 1779 (2347; noise floor 599), 29.2 dB PSNR (fast@6: 31.9). RESULTS.md, "OpenVINO block by
# block under feature caching". Larger UNets (SDXL) and the other classes are unmeasured: unchanged.
_OPENVINO_INT8_BLOCKS = Entry(
    "openvino_runtime",
    {**_OPENVINO_INT8.config, "blocks": True},
    when=_OPENVINO_INT8.when,
    why="the UNet block by block, so feature caching skips its deep blocks on 2 of 3 steps: SD1.5 512/20 on a "
    "2-core AVX512-BF16 EPYC 23.2 s, 4.27x OpenVINO static f32 (fast@6: 2.77x); trained-sd's prompt accuracy "
    "and FID within the seed noise floor (RESULTS.md, 'OpenVINO block by block under feature caching')",
)
_FAST_7 = tuple(_OPENVINO_INT8_BLOCKS if entry is _OPENVINO_INT8 else entry for entry in _FAST_6)

# balanced@5: on AVX512-BF16, for UNets up to SD1.5's size, the UNet runs int8 inside OpenVINO as in
# fast@6 (whole UNet, checked against PyTorch at 25 dB, the plain bf16 conversion where refused).
# balanced@4 declined it for 31.9-37.0 dB PSNR to the untouched images, under a 40 dB floor set on random
# weights; issue 29 judges balanced by the trained models instead (prompt accuracy and domain FID within
# the seed noise floor, DESIGN.md's quality rule). trained-sd (48 captions, 20 steps, 3 runs, this EPYC):
# int8 in 63 of 63 layers, 26.3 dB pooled check; accuracy 0.979 (untouched 0.979, balanced@4 0.958), FID
# 2353 (2347; floor 599), 36.9 dB PSNR. SD1.5 512x512 on a 2-core AVX512-BF16 EPYC, OpenVINO static f32
# in the same bench run: 20 steps 33.8 s with int8 running (floor lowered to 15 dB: on random weights the
# batch-2 model checks at 22-26 dB) vs balanced@4's 48.9 s and OpenVINO's 87.4 s; 4 steps 10.6 s vs
# 13.9 s and 25.1 s. With the random weights' refusal balanced@5 ran as balanced@4 (49.2 s). RESULTS.md,
# "balanced@5: int8 where the trained model holds".
_OPENVINO_INT8_BALANCED = Entry(
    "openvino_runtime",
    _OPENVINO_INT8.config,
    when=_OPENVINO_INT8.when,
    why="SD1.5 512/20 on a 2-core AVX512-BF16 EPYC: 33.8 s with the UNet in int8 vs balanced@4's bf16 48.9 s, "
    "2.58x OpenVINO static f32 (87.4 s; int8 floor lowered to 15 dB for random weights); trained-sd: prompt "
    "accuracy 0.979 (untouched 0.979) and FID 2353 (2347) within the seed noise floor, 36.9 dB PSNR (RESULTS.md, "
    "'balanced@5: int8 where the trained model holds')",
)
_BALANCED_5 = insert_before(
    tuple(_OPENVINO_INT8_BALANCED if entry is _OPENVINO_BF16 else entry for entry in _BALANCED_4),
    "half_precision",
    _OPENVINO_BF16_LARGE,
)

_LOW_MEMORY_1 = (
    Entry("model_offload", why="by budget: the largest component fits, the whole pipeline does not"),
    Entry("group_offload", why="by budget: at least 2 GB free; overlaps transfers with compute (CUDA streams)"),
    Entry("sequential_offload", why="by budget: less than that; the slowest and smallest"),
    Entry(
        "quantize_4bit",
        when=_CUDA,
        why="NF4 weights: about a quarter of the bf16 size (QLoRA, Dettmers et al. 2023); slow on CPU, "
        "where RAM is rarely the limit",
    ),
    Entry("attention_slicing", why="attention scores computed one head group at a time"),
    Entry("vae_slicing", why="one image decoded at a time"),
    Entry("vae_tiling", why="the VAE decodes tiles instead of the whole latent"),
)

# low-memory@2: weights in the device's half dtype first (half the bytes of @1's float32 weights on
# GPUs, which @1 left to the other tiers): the fit table (docs/fit.md) showed @1 planning SDXL at
# 12.9 GB of float32 weights on a 6 GB GPU, where 6.6 GB of bf16/fp16 weights would have been offloaded.
_HALF_WEIGHTS = (
    Entry(
        "half_precision",
        why="bfloat16/float16 weights take half the memory of float32; the dtype follows the hardware, as in "
        "the other tiers (on CPUs without bf16 units it stays float32)",
    ),
    Entry(
        "vae_fp16_fix",
        why="with float16 weights, SDXL's VAE would otherwise be kept in float32",
    ),
)
_LOW_MEMORY_2 = (*_HALF_WEIGHTS, *_LOW_MEMORY_1)

# low-memory@3: weights stored small where compute stays float32 (a CPU without bf16 units, where @2's
# half_precision is skipped): bfloat16 storage halves the weights of the tiny SD pipeline's RAM at
# 60 dB PSNR; components already in 16 bits are left alone (float8 storage is lossier).
_LOW_MEMORY_3 = (
    *_HALF_WEIGHTS,
    Entry(
        "weight_storage",
        why="bfloat16 storage, float32 compute layer by layer (diffusers' layerwise casting): half the RAM "
        "where bf16 compute would be slower",
    ),
    *_LOW_MEMORY_1,
)

TIERS: dict[str, dict[int, Preset]] = {
    "conservative": {
        1: Preset(
            "conservative",
            _CONSERVATIVE_1,
            1,
            "output visually identical to the original (numerical drift only)",
        ),
        2: Preset(
            "conservative",
            _CONSERVATIVE_2,
            2,
            "output visually identical to the original (numerical drift only)",
        ),
    },
    "balanced": {
        1: Preset("balanced", _BALANCED_1, 1, "best speed with no visible quality loss on this hardware"),
        2: Preset("balanced", _BALANCED_2, 2, "best speed with no visible quality loss on this hardware"),
        3: Preset("balanced", _BALANCED_3, 3, "best speed with no visible quality loss on this hardware"),
        4: Preset("balanced", _BALANCED_4, 4, "best speed with no visible quality loss on this hardware"),
        5: Preset("balanced", _BALANCED_5, 5, "best speed with no visible quality loss on this hardware"),
    },
    "fast": {
        1: Preset("fast", _FAST_1, 1, "small visible cost accepted for more speed"),
        2: Preset("fast", _FAST_2, 2, "small visible cost accepted for more speed"),
        3: Preset("fast", _FAST_3, 3, "small visible cost accepted for more speed"),
        4: Preset("fast", _FAST_4, 4, "small visible cost accepted for more speed"),
        5: Preset("fast", _FAST_5, 5, "small visible cost accepted for more speed"),
        6: Preset("fast", _FAST_6, 6, "small visible cost accepted for more speed"),
        7: Preset("fast", _FAST_7, 7, "small visible cost accepted for more speed"),
    },
    "ultra": {
        1: Preset("ultra", _ULTRA_1, 1, "maximum speed, clear quality cost"),
        2: Preset("ultra", _ULTRA_2, 2, "maximum speed, clear quality cost"),
        3: Preset("ultra", _ULTRA_3, 3, "maximum speed, clear quality cost"),
        4: Preset("ultra", _ULTRA_4, 4, "maximum speed, clear quality cost"),
        5: Preset("ultra", _ULTRA_5, 5, "maximum speed, clear quality cost"),
        6: Preset("ultra", _ULTRA_6, 6, "maximum speed, clear quality cost"),
    },
    "low-memory": {
        1: Preset("low-memory", _LOW_MEMORY_1, 1, "smallest footprint that still runs"),
        2: Preset("low-memory", _LOW_MEMORY_2, 2, "smallest footprint that still runs"),
        3: Preset("low-memory", _LOW_MEMORY_3, 3, "smallest footprint that still runs"),
    },
}
"""Every published version of every tier, by name and version number."""
