"""Probes: how `sdopt.detect` learns the facts it cannot read from package metadata.

- `sdopt.probes.run`: a probe in a fresh interpreter with a time limit (a driver or ABI crash
  costs a reason, never the process), and the on-disk cache of probe results;
- `sdopt.probes.cpu`: the bf16 micro-benchmark, macOS's sysctl, the RAM;
- `sdopt.probes.accelerators`: CUDA devices (a kernel in a subprocess), MPS and XPU;
- `sdopt.probes.packages`: whether each optional package works on the target device.

Probes return plain data; `sdopt.capabilities` turns it into facts.
"""
