"""A brand-new GPU whose installed PyTorch has no kernels for it yet: what sdopt detects, the CPU
fallback and its warning, and what changes once a torch build that supports the card is installed.

python examples/gpu_without_kernels.py          # simulated: an RTX 5090 (sm_120), torch built for sm_50..sm_90
python examples/gpu_without_kernels.py --real   # this machine, as detected

torch.cuda.is_available() is True on such a machine, and the first CUDA kernel fails with "no
kernel image is available for execution on the device". sdopt's detector compares the card's
architecture with the architectures the torch build ships, so the plan runs on the CPU with a
warning naming the torch build to install, instead of crashing at the first call.
"""

from __future__ import annotations

import argparse

import sdopt.logging
from sdopt import detect, plan
from sdopt.testing import fake_capabilities, tiny_pipeline


def main() -> None:
    sdopt.logging.quiet_third_party_imports()  # their import noise off the terminal, as the CLI does
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", action="store_true", help="this machine instead of the simulated one")
    parser.add_argument("--tier", default="balanced")
    args = parser.parse_args()

    pipe = tiny_pipeline("sdxl")  # planning only: any pipeline works, nothing is changed
    if args.real:
        machines = {"this machine": detect()}
    else:
        machines = {
            "today (torch without sm_120 kernels)": fake_capabilities("rtx5090-no-kernels"),
            "after `pip install torch --index-url .../cu128`": fake_capabilities("rtx5090-no-kernels", kernels=True),
        }
    plans = {}
    for label, caps in machines.items():
        print(f"== {label}")
        for gpu in caps.cuda:
            state = "usable" if gpu.usable else "NOT usable (see the warning)"
            print(f"  cuda:{gpu.index} {gpu.name} {gpu.arch}, {gpu.total_memory_gb:.0f} GB: {state}")
        print(f"  sdopt runs on: {caps.device}")
        result = plan(pipe, tier=args.tier, caps=caps)
        for warning in result.warnings:  # the same text `sdopt doctor` and every report carry
            print(f"  warning: {warning}")
        plans[label] = [step.name for step in result.steps]
        print(f"  {args.tier} applies: {', '.join(plans[label]) or 'nothing'}\n")
    if len(plans) == 2:
        before, after = plans.values()
        print("what the new torch build changes:")
        print(f"  added:   {', '.join(s for s in after if s not in before) or '-'}")
        print(f"  dropped: {', '.join(s for s in before if s not in after) or '-'}")


if __name__ == "__main__":
    main()
