"""Accelerator probes: CUDA devices (a kernel in a subprocess), MPS (a kernel in process: it raises,
it does not crash) and XPU."""

from __future__ import annotations

import sys
from typing import Any

from sdopt.probes.run import dist_version, run_probe

_CUDA_PROBE = r"""
import json, sys, torch
results = []
for index in range(torch.cuda.device_count()):
    try:
        device = torch.device("cuda", index)
        x = torch.randn(64, 64, device=device, dtype=torch.float16)
        y = x @ x
        q = torch.randn(1, 2, 16, 32, device=device, dtype=torch.float16)
        torch.nn.functional.scaled_dot_product_attention(q, q, q)
        torch.cuda.synchronize(device)
        free, total = torch.cuda.mem_get_info(index)
        results.append({"usable": True, "free_gb": free / 2**30})
    except Exception as error:
        results.append({"usable": False, "reason": f"{type(error).__name__}: {str(error).splitlines()[0]}"})
print(json.dumps(results))
"""


def probe_cuda_devices() -> list[dict[str, Any]]:
    """Run a tiny allocation + matmul + SDPA on every CUDA device, in a subprocess."""
    import torch

    results, error, _ = run_probe(_CUDA_PROBE)
    if results is None:
        return [{"usable": False, "reason": error}] * torch.cuda.device_count()
    return list(results)


def accelerator_torch() -> Any:
    """``torch``, when this build could drive an accelerator; ``None`` for a CPU-only build.

    A ``+cpu`` build has no CUDA, MPS or XPU support, so detection skips importing torch (over a
    second on a small machine) and stays well under a second.
    """
    version = dist_version("torch") or ""
    if version.endswith("+cpu") and "torch" not in sys.modules:
        return None
    import torch

    return torch


def mps_state() -> tuple[bool, bool, str]:
    """Whether MPS is present, whether a small kernel runs on it, and why not."""
    torch = accelerator_torch() if sys.platform == "darwin" else None
    if torch is None:
        return False, False, ""
    backend = getattr(torch.backends, "mps", None)
    if backend is None or not backend.is_available():
        return False, False, ""
    try:
        x = torch.ones(8, 8, device="mps")
        (x @ x).cpu()
    except Exception as error:  # MPS raises Python errors, it does not crash the process
        return True, False, f"{type(error).__name__}: {error}"
    return True, True, ""


def xpu_available() -> bool:
    torch = accelerator_torch()
    xpu = getattr(torch, "xpu", None)
    try:
        return bool(xpu is not None and xpu.is_available())
    except Exception:
        return False


def cuda_driver() -> str:
    """The CUDA driver version torch reports, or "unknown"."""
    try:
        import torch

        get_driver: Any = getattr(torch._C, "_cuda_getDriverVersion")  # noqa: B009  # private, may be absent
        return str(get_driver())
    except Exception:  # CPU builds and old torch: the GPU name and capability still key the cache
        return "unknown"
