"""Train the models sdopt ships for measuring quality offline (issue 28), deterministically.

Today: the scene classifier of `sdopt.quality` (shape, colour, position, background of a 64x64 render;
its penultimate features are the domain FID's). It trains on jittered renders drawn by a fixed seed,
with one thread, and writes ``sdopt/quality/classifier.safetensors`` and ``classifier.json`` (the
weights' SHA-256, the settings, the accuracy on freshly rendered images and the seconds it took).
A test checks the shipped file against that hash. Not part of CI.

    python tools/train_quality_models.py            # ~1 minute on 2 CPU cores
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import torch

from sdopt.quality import classifier as model_module
from sdopt.quality.scenes import FIELDS, dataset

SETTINGS = {"train_images": 12000, "test_images": 2000, "epochs": 6, "batch": 128, "lr": 2e-3, "seed": 0}


def main() -> int:
    started = time.perf_counter()
    torch.manual_seed(SETTINGS["seed"])
    torch.set_num_threads(1)  # the same arithmetic order on any machine: the same weights
    torch.use_deterministic_algorithms(True)
    images, labels, _ = dataset(SETTINGS["train_images"], seed=SETTINGS["seed"])
    test_images, test_labels, _ = dataset(SETTINGS["test_images"], seed=SETTINGS["seed"] + 1)
    x = model_module.as_batch(images)
    y = torch.from_numpy(labels)
    model = model_module.SceneClassifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=SETTINGS["lr"])
    order = torch.Generator().manual_seed(SETTINGS["seed"])
    for epoch in range(SETTINGS["epochs"]):
        model.train()
        permutation = torch.randperm(len(x), generator=order)
        total = 0.0
        for start in range(0, len(x), SETTINGS["batch"]):
            index = permutation[start : start + SETTINGS["batch"]]
            outputs = model(x[index])
            loss = sum(
                torch.nn.functional.cross_entropy(outputs[field], y[index, column])
                for column, field in enumerate(FIELDS)
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss) * len(index)
        print(f"epoch {epoch + 1}: loss {total / len(x):.4f}", flush=True)
    model.eval()
    with torch.no_grad():
        outputs = model(model_module.as_batch(test_images))
    truth = torch.from_numpy(test_labels)
    per_field = {f: float((outputs[f].argmax(1) == truth[:, c]).float().mean()) for c, f in enumerate(FIELDS)}
    all_right = torch.stack([outputs[f].argmax(1) == truth[:, c] for c, f in enumerate(FIELDS)]).all(0)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(model_module.WEIGHTS))
    record = {
        "sha256": model_module.weights_sha256(),
        "settings": SETTINGS,
        "accuracy_per_field": per_field,
        "accuracy_all_fields": float(all_right.float().mean()),
        "seconds": round(time.perf_counter() - started, 1),
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, 1 thread",
    }
    Path(model_module.RECORD).write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
