"""vae_slicing and vae_tiling: flags really set, really used, exactly restored."""

from __future__ import annotations

import numpy as np

from sdopt import optimize, plan
from sdopt.testing import run_pipeline
from tests.helpers import Snapshot, ddpm_pipeline


def test_vae_slicing_decodes_one_image_at_a_time(pipe, family: str, cpu_caps) -> None:
    snapshot = Snapshot(pipe, family)
    report = optimize(pipe, tier=None, extra=["vae_slicing"], caps=cpu_caps)
    assert pipe.vae.use_slicing is True
    calls: list[int] = []
    hook = pipe.vae.decoder.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    run_pipeline(pipe, family, num_images_per_prompt=2)
    hook.remove()
    assert calls == [1, 1]  # two decoder calls of one image each
    report.undo()
    snapshot.assert_identical()
    assert plan(pipe, tier=None, extra=["vae_slicing"], caps=cpu_caps).steps


def test_vae_tiling_tiles_large_images_only(sd_pipe, cpu_caps) -> None:
    snapshot = Snapshot(sd_pipe, "sd")
    report = optimize(sd_pipe, tier=None, extra=[{"name": "vae_tiling", "tile_size": 32}], caps=cpu_caps)
    assert (sd_pipe.vae.use_tiling, sd_pipe.vae.tile_sample_min_size, sd_pipe.vae.tile_latent_min_size) == (
        True,
        32,
        4,
    )
    tiles: list[tuple[int, ...]] = []
    hook = sd_pipe.vae.decoder.register_forward_pre_hook(lambda module, args: tiles.append(tuple(args[0].shape[-2:])))
    image = run_pipeline(sd_pipe, "sd")
    hook.remove()
    assert len(tiles) > 1 and all(shape[0] <= 4 for shape in tiles)
    assert image.shape == snapshot.output.shape
    report.undo()
    snapshot.assert_identical()
    assert sd_pipe.vae.tile_sample_min_size == 64


def test_vae_tiling_with_defaults_leaves_small_images_untouched(sd_pipe, cpu_caps) -> None:
    snapshot = Snapshot(sd_pipe, "sd")
    report = optimize(sd_pipe, tier=None, extra=["vae_tiling"], caps=cpu_caps)
    assert report.applied[0].config == {"tile_size": 64, "overlap": 0.25}
    assert "larger than 64 px" in report.applied[0].reason
    assert np.array_equal(run_pipeline(sd_pipe, "sd"), snapshot.output)
    assert plan(sd_pipe, tier=None, extra=["vae_tiling"], caps=cpu_caps).skipped[0].reason == "already enabled"
    report.undo()
    snapshot.assert_identical()


def test_vae_tiling_rejects_sizes_off_the_latent_grid(sd_pipe, cpu_caps) -> None:
    result = plan(sd_pipe, tier=None, extra=[{"name": "vae_tiling", "tile_size": 30}], caps=cpu_caps)
    assert "not a multiple of the VAE's downscale factor 8" in result.skipped[0].reason


def test_pipelines_without_a_vae_are_skipped(cpu_caps) -> None:
    pipe = ddpm_pipeline()
    result = plan(pipe, tier="low-memory", caps=cpu_caps)
    reasons = {d.name: d.reason for d in result.skipped}
    assert reasons["vae_slicing"] == reasons["vae_tiling"] == "the pipeline has no VAE"
