"""Optimize a pipeline, look at the report, undo. Runs offline on a tiny random-weight pipeline.

python examples/quickstart.py            # tiny SD pipeline
python examples/quickstart.py PATH_OR_ID # your own model, loaded with from_pretrained
"""

from __future__ import annotations

import sys

import numpy as np
import torch

import sdopt.logging
from sdopt import detect, optimize
from sdopt.testing import call_kwargs, tiny_pipeline


def main() -> None:
    sdopt.logging.quiet_third_party_imports()  # their import noise off the terminal, as the CLI does
    if len(sys.argv) > 1:
        from diffusers import DiffusionPipeline

        pipe = DiffusionPipeline.from_pretrained(sys.argv[1])
        kwargs = {"prompt": "a lighthouse at dawn", "num_inference_steps": 20, "output_type": "np"}
    else:
        pipe = tiny_pipeline("sd")
        kwargs = call_kwargs("sd")

    print(f"device: {detect().device} ({detect().device_reason})")
    before = pipe(**{**kwargs, "generator": torch.Generator().manual_seed(0)}).images

    report = optimize(pipe, tier="balanced")
    print(report)
    pipe(**{**kwargs, "generator": torch.Generator().manual_seed(0)})

    report.undo()
    after = pipe(**{**kwargs, "generator": torch.Generator().manual_seed(0)}).images
    print("identical after undo:", np.array_equal(before, after))


if __name__ == "__main__":
    main()
