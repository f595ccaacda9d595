"""Simulated parts the product itself uses: random-weight pipelines of real architectures, tiny
in-memory tokenizers and pipelines, and imaginary machines.

- `sdopt.simulation.architectures`: real-size architectures with random weights (``--arch sd15``
  and the other built-ins) and random-weight stand-ins of published replacement models;
- `sdopt.simulation.families`: the tiny pipelines of the five families (``--arch tiny-sd``);
- `sdopt.simulation.machines`: fake capabilities of machine profiles (``sdopt tiers --fit``);
- `sdopt.simulation.parts` / `sdopt.simulation.tokenizers`: their building blocks.

Users' tests reach all of it through `sdopt.testing`, which re-exports it.
"""
