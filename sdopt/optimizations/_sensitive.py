"""The denoiser's children that int8 leaves in floating point (`static_int8`, `openvino_runtime`'s int8)."""

# Left in floating point by published int8 diffusion recipes (and measured here: see `static_int8`):
# the timestep/condition embeddings feed every block, and the first and last convolutions touch the
# latents directly.
SENSITIVE = (
    "conv_in",
    "conv_out",
    "time_embedding",
    "add_embedding",
    "time_text_embed",
    "pos_embed",
    "x_embedder",
    "context_embedder",
    "proj_out",
)
