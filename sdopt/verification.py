"""``optimize(..., verify=True)``: prove the optimized pipeline runs before handing it back.

Some failures only show when the pipeline runs: a kernel the device lacks, a hook a model does not
expect, a dtype a pipeline does not convert. With ``verify=True`` the optimized pipeline makes one
minimal real call inside the transaction (2 steps at a quarter of its default size, prompt and any
image inputs made up); if it raises, the steps are applied again one at a time, each followed by the
same call, to find the first one after which it fails. That step is reported failed with the error
and the pipeline is re-planned without it. If the untouched pipeline cannot make the call either
(inputs the verification cannot make up), verification is reported as inconclusive and the steps stay.
"""

from __future__ import annotations

import contextvars
from typing import Any

import torch

from sdopt.calls import placeholder_image, verification_kwargs

__all__ = ["placeholder_image", "run_verification", "verification_kwargs", "verifying"]

_verifying = contextvars.ContextVar("sdopt_verifying", default=False)


def verifying() -> bool:
    """Whether the current call is sdopt's own verification call (call-time optimizations that learn
    from calls, like static int8's calibration, leave it alone)."""
    return _verifying.get()


def run_verification(pipe: Any) -> None:
    """Make the minimal call; raises what the pipeline raises."""
    token = _verifying.set(True)
    try:
        with torch.inference_mode():
            pipe(**verification_kwargs(pipe))
    finally:
        _verifying.reset(token)
