"""Simulated parts the product itself uses: random-weight pipelines of real architectures, tiny
in-memory tokenizers and pipelines, and imaginary machines.

- :mod:`sdopt.simulation.architectures`: real-size architectures with random weights (``--arch sd15``
  and the other built-ins) and random-weight stand-ins of published replacement models;
- :mod:`sdopt.simulation.families`: the tiny pipelines of the five families (``--arch tiny-sd``);
- :mod:`sdopt.simulation.machines`: fake capabilities of machine profiles (``sdopt tiers --fit``);
- :mod:`sdopt.simulation.parts` / :mod:`sdopt.simulation.tokenizers`: their building blocks.

Users' tests reach all of it through :mod:`sdopt.testing`, which re-exports it.
"""
