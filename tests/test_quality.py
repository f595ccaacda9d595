"""sdopt.quality: the scene domain, the shipped classifier and the metrics, on known inputs."""

from __future__ import annotations

import numpy as np
import pytest

from sdopt.quality import (
    Scene,
    all_scenes,
    classifier,
    dataset,
    domain_fid,
    field_accuracy,
    noise_floor,
    prompt_accuracy,
    render,
)
from sdopt.quality.metrics import frechet_distance, psnr, ssim


def test_the_shipped_classifier_is_the_one_the_training_script_recorded() -> None:
    record = classifier.recorded()
    assert classifier.weights_sha256() == record["sha256"], "retrain with tools/train_quality_models.py"
    assert record["accuracy_all_fields"] >= 0.97


def test_the_classifier_reads_fresh_renders() -> None:
    images, labels, captions = dataset(400, seed=1234)  # never seen: the script trains on seeds 0 and 1
    assert prompt_accuracy(images, captions) >= 0.97
    accuracy = field_accuracy(images, captions)
    assert min(accuracy.values()) >= 0.97, accuracy


def test_a_render_scores_one_and_a_wrong_colour_zero() -> None:
    scenes = all_scenes()
    assert prompt_accuracy([render(s) for s in scenes], [s.caption for s in scenes]) == 1.0
    red = Scene("circle", "red", "top left", "white")
    wrong = Scene("circle", "blue", "top left", "white")
    assert prompt_accuracy([render(red)], [wrong.caption]) == 0.0
    elsewhere = Scene("circle", "red", "bottom right", "white")
    assert prompt_accuracy([render(red)], [elsewhere.caption]) == 0.0


def test_domain_fid_is_near_zero_for_renders_and_large_for_noise() -> None:
    scenes = all_scenes()
    captions = [s.caption for s in scenes]
    rng = np.random.default_rng(7)
    renders = [render(s, rng) for s in scenes]
    noise = list(np.random.default_rng(8).integers(0, 256, (len(scenes), 64, 64, 3), dtype=np.uint8))
    near, far = domain_fid(renders, captions), domain_fid(noise, captions)
    assert near < far / 10, (near, far)
    features = np.random.default_rng(0).normal(size=(50, 4))
    assert frechet_distance(features, features) == pytest.approx(0.0, abs=1e-6)


def test_pairwise_psnr_and_ssim_on_known_inputs() -> None:
    image = render(Scene("square", "green", "top right", "black"))
    assert psnr(image, image) == float("inf") and ssim(image, image) == 1.0
    shifted = np.roll(image, 2, axis=1)
    assert ssim(image, shifted) < 0.95 and psnr(image, shifted) < 30
    assert psnr(image, image.astype(np.float32) / 255) == float("inf")  # float images in [0, 1] too


def test_the_noise_floor_compares_a_pipeline_with_itself_at_two_seeds() -> None:
    def generate(prompts, seed):
        rng = np.random.default_rng(seed)
        return [render(Scene.parse(p), rng) for p in prompts]

    captions = [s.caption for s in all_scenes()[:24]]
    floor = noise_floor(generate, captions)
    assert set(floor) == {"psnr_db", "ssim", "accuracy_spread", "fid_spread"}
    assert floor["accuracy_spread"] <= 0.05 and 10 < floor["psnr_db"] < float("inf")


def test_captions_outside_the_domain_are_named() -> None:
    with pytest.raises(ValueError, match="not a caption of the scene domain"):
        Scene.parse("a photo of a fox")
    with pytest.raises(ValueError, match="unknown shape 'star'"):
        Scene.parse("a red star at the top left on a white background")
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        prompt_accuracy([render(all_scenes()[0])] * 2, [all_scenes()[0].caption])
