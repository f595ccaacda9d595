"""Whether each optional package works on the target device: imported and run once, in a subprocess."""

from __future__ import annotations

from typing import Any

from sdopt.probes.run import dist_version, read_cache, run_probe, write_cache

OPTIONAL_PACKAGES = ("xformers", "bitsandbytes", "torchao", "triton", "flash_attn", "sageattention", "openvino")

_PACKAGE_PROBE = r"""
import json, sys, torch
name, device = sys.argv[1], sys.argv[2]
half = torch.float16 if device == "cuda" else torch.float32


def needs_cuda():
    if device != "cuda":
        raise RuntimeError(f"{name} kernels need CUDA (target device: {device})")


def run():
    if name == "xformers":
        import xformers.ops as ops
        needs_cuda()
        q = torch.randn(1, 16, 2, 32, device=device, dtype=half)
        ops.memory_efficient_attention(q, q, q)
    elif name == "bitsandbytes":
        import bitsandbytes as bnb
        layer = bnb.nn.Linear8bitLt(64, 64, has_fp16_weights=False).to(device)
        layer(torch.randn(2, 64, device=device, dtype=half))
    elif name == "torchao":
        from torchao.quantization import Int8WeightOnlyConfig, quantize_
        layer = torch.nn.Sequential(torch.nn.Linear(64, 64)).to(device)
        quantize_(layer, Int8WeightOnlyConfig())
        layer(torch.randn(2, 64, device=device))
    elif name == "triton":
        import triton  # noqa: F401
        needs_cuda()
    elif name == "flash_attn":
        from flash_attn import flash_attn_func
        needs_cuda()
        q = torch.randn(1, 16, 2, 32, device=device, dtype=half)
        flash_attn_func(q, q, q)
    elif name == "sageattention":
        from sageattention import sageattn
        needs_cuda()
        q = torch.randn(1, 2, 16, 64, device=device, dtype=half)
        sageattn(q, q, q)
    elif name == "openvino":
        import openvino as ov
        if device != "cpu":
            raise RuntimeError(f"sdopt runs OpenVINO on the CPU only (target device: {device})")
        layer = torch.nn.Linear(8, 8).eval()
        model = ov.convert_model(layer, example_input=torch.randn(2, 8))
        ov.Core().compile_model(model, "CPU")(torch.randn(2, 8).numpy())
    if device == "cuda":
        torch.cuda.synchronize()


try:
    run()
    print(json.dumps({"usable": True}))
except Exception as error:
    first_line = (str(error).splitlines() or [""])[0]
    print(json.dumps({"usable": False, "reason": f"{type(error).__name__}: {first_line}"}))
"""


def probe_package(name: str, device: str) -> tuple[bool, str, list[str]]:
    """Import ``name`` and run one tiny operation of it on ``device``, in a subprocess: whether it
    works, why not, and what it printed on the way (import noise, kept out of the user's terminal)."""
    result, error, heard = run_probe(_PACKAGE_PROBE, name, device)
    if result is None:
        return False, error, heard
    return bool(result.get("usable")), result.get("reason", ""), heard


def package_states(device: str, hardware: str) -> dict[str, dict[str, Any]]:
    """Optional packages and whether they work on ``device``, probed once per package version, torch
    version and ``hardware`` (the key: on CUDA the GPUs and the driver, so a new card is probed again)."""
    cache = read_cache()
    changed = False
    packages = {}
    for name in OPTIONAL_PACKAGES:
        version = dist_version(name.replace("_", "-")) or dist_version(name)
        info: dict[str, Any] = {
            "installed": version is not None,
            "version": version,
            "usable": False,
            "reason": "",
            "messages": [],
        }
        if version is None:
            info["reason"] = "not installed"
        else:
            key = f"{name}=={version}|torch=={dist_version('torch')}|{hardware}"
            if not _well_formed(cache.get(key)):  # absent, or damaged in the file: probed again
                usable, reason, heard = probe_package(name, device)
                cache[key] = {"usable": usable, "reason": reason, "messages": heard}
                changed = True
            info.update(cache[key])
        packages[name] = info
    if changed:
        write_cache(cache)
    return packages


def _well_formed(entry: Any) -> bool:
    """Whether a stored probe result has the shape this module writes (anything else is probed again)."""
    return (
        isinstance(entry, dict)
        and isinstance(entry.get("usable"), bool)
        and isinstance(entry.get("reason"), str)
        and isinstance(entry.get("messages"), list)
        and all(isinstance(line, str) for line in entry["messages"])
    )
