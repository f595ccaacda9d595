"""Tiny offline pipelines and fake capabilities, for testing code that uses sdopt.

Everything here builds without a download: random weights, in-memory tokenizers, real
diffusers classes. The pipelines are small enough that a 2-step 64x64 call takes well under
a second on one CPU core, yet they keep the structure of the real models (VAEs with four
resolution levels so ``vae_scale_factor`` is 8, CLIP and T5 text encoders, the real
schedulers), so code that works on them works on the real ones.

- `tiny_pipeline` / `call_kwargs`: the five text-to-image families sdopt is tuned for;
- `zoo_pipeline` / `zoo_call_kwargs`: many more pipeline classes (img2img, inpaint,
  ControlNet, adapters, video, audio, other families), for "works on any pipeline" tests;
- `trained_pipeline`: tiny pipelines with trained weights (``"sd"``, ``"dit"``) on the scene domain of
  `sdopt.quality`, for measuring what an optimization costs in quality;
- `fake_capabilities`: imaginary machines; `pipeline_state` / `state_differences`:
  exact before/after comparisons.

The tiny pipelines, tokenizers and machine profiles live in `sdopt.simulation` (the product uses
them too); they are re-exported here so tests import everything from one place.

Examples:
    >>> import torch
    >>> from sdopt.testing import tiny_pipeline, call_kwargs
    >>> pipe = tiny_pipeline("sd")
    >>> image = pipe(**call_kwargs("sd")).images[0]
    >>> image.shape
    (64, 64, 3)
"""

from sdopt.simulation.families import FAMILIES, call_kwargs, run_pipeline, tiny_pipeline
from sdopt.simulation.machines import PROFILES, fake_capabilities
from sdopt.simulation.parts import tiny_autoencoder_tiny
from sdopt.simulation.tokenizers import tiny_clip_tokenizer, tiny_t5_tokenizer
from sdopt.simulation.trained import load as trained_pipeline
from sdopt.testing.memory import resident_tensor_bytes
from sdopt.testing.state import pipeline_state, state_differences
from sdopt.testing.zoo import run_zoo_pipeline, zoo_call_kwargs, zoo_entry, zoo_names, zoo_pipeline

__all__ = [
    "resident_tensor_bytes",
    "FAMILIES",
    "PROFILES",
    "call_kwargs",
    "fake_capabilities",
    "pipeline_state",
    "run_pipeline",
    "run_zoo_pipeline",
    "state_differences",
    "tiny_autoencoder_tiny",
    "tiny_clip_tokenizer",
    "tiny_pipeline",
    "tiny_t5_tokenizer",
    "trained_pipeline",
    "zoo_call_kwargs",
    "zoo_entry",
    "zoo_names",
    "zoo_pipeline",
]
