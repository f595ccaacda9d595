"""The OpenVINO peer, timed alternately with sdopt's tiers in one `sdopt.bench` run.

optimum-intel pins diffusers/transformers versions that conflict with sdopt's, so OpenVINO runs
in its own virtualenv, in worker processes that `sdopt.bench` drives as peers image by image
(baseline, balanced, fast, openvino-static, openvino-dynamic, baseline, ...). Through nox:

    nox -s openvino_peer -- --tiers baseline,balanced,fast --steps 4 --runs 2 \
        --json benchmarks/results/cpu-sd15-4steps.json

Phases (the nox session runs `compare`; the others run inside the OpenVINO virtualenv):
    compare  (sdopt's env)  writes the random-weight SD1.5 pipeline `sdopt bench --arch sd15` builds
                            (seed 0), has it exported, starts the workers and runs the bench
    export   (OpenVINO env) OVStableDiffusionPipeline.from_pretrained(..., export=True) to an IR dir
    serve    (OpenVINO env) loads the IR (static: reshaped to batch 1 at the bench size), compiles,
                            then renders one image per request line on stdin

Every peer image uses the same prompt, seed and torch generator as the tiers (optimum-intel's
pipelines are diffusers pipelines over OpenVINO models), so its PSNR vs the baseline is meaningful.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPLY = "SDOPT-PEER "  # prefix of the worker's reply lines; libraries may print to stdout too


# --- the OpenVINO side -----------------------------------------------------------------------


def export(torch_dir: str, ir_dir: str) -> None:
    from optimum.intel import OVStableDiffusionPipeline

    pipe = OVStableDiffusionPipeline.from_pretrained(torch_dir, export=True, compile=False)
    pipe.save_pretrained(ir_dir)
    print(f"exported {torch_dir} to {ir_dir}", file=sys.stderr)


def _rss_gb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e9


def serve(ir_dir: str, shape: str, precision: str, height: int, width: int, threads: int) -> None:
    import numpy as np
    import openvino as ov
    import torch
    from optimum.intel import OVStableDiffusionPipeline

    ov_config: dict[str, Any] = {"INFERENCE_NUM_THREADS": threads} if threads else {}
    if precision != "default":  # default: OpenVINO picks bf16 wherever the CPU has bf16 instructions
        ov_config["INFERENCE_PRECISION_HINT"] = precision
    pipe = OVStableDiffusionPipeline.from_pretrained(ir_dir, compile=False, ov_config=ov_config)
    if shape == "static":
        pipe.reshape(batch_size=1, height=height, width=width, num_images_per_prompt=1)
    pipe.compile()
    pipe.set_progress_bar_config(disable=True)
    unet_precision = pipe.unet.request.get_property("INFERENCE_PRECISION_HINT")
    denoiser_calls: list[float] = []
    decode_calls: list[float] = []
    _time_calls(pipe.unet, "forward", denoiser_calls)
    _time_calls(pipe.vae, "decode", decode_calls)
    _reply(
        {
            "runtime": f"OpenVINO {ov.__version__} via optimum-intel ({shape} shape, {precision} precision)",
            "inference_precision": str(unet_precision),
            "threads": pipe.unet.request.get_property("INFERENCE_NUM_THREADS"),
        }
    )
    for line in sys.stdin:
        request = json.loads(line)
        denoiser_calls.clear()
        decode_calls.clear()
        peak = [_rss_gb()]
        stop = threading.Event()
        sampler = threading.Thread(target=_sample_rss, args=(peak, stop), daemon=True)
        sampler.start()
        images = pipe(
            request["prompt"],
            num_inference_steps=request["steps"],
            guidance_scale=request["guidance"],
            height=request["height"],
            width=request["width"],
            output_type="np",
            generator=torch.Generator("cpu").manual_seed(request["seed"]),
        ).images
        stop.set()
        sampler.join()
        image = (np.clip(np.asarray(images[0], dtype=np.float32), 0, 1) * 255).round().astype(np.uint8)
        np.save(request["image_path"], image)
        _reply(
            {
                "denoiser_calls_s": denoiser_calls,
                "decode_calls_s": decode_calls,
                "peak_memory_gb": max(peak[0], _rss_gb()),
            }
        )


def _time_calls(owner: Any, name: str, into: list[float]) -> None:
    inner = getattr(owner, name)

    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            into.append(time.perf_counter() - started)

    setattr(owner, name, timed)


def _sample_rss(peak: list[float], stop: threading.Event) -> None:
    while not stop.wait(0.005):
        peak[0] = max(peak[0], _rss_gb())


def _reply(message: dict[str, Any]) -> None:
    print(REPLY + json.dumps(message), flush=True)


# --- sdopt's side ----------------------------------------------------------------------------


class OpenVINOPeer:
    """A `sdopt.bench.Peer` backed by a `serve` worker in the OpenVINO virtualenv."""

    def __init__(self, python: str, ir_dir: str, spec: str, height: int, width: int, threads: int | None) -> None:
        shape, _, precision = spec.partition("-")
        if shape not in ("static", "dynamic") or precision not in ("", "f32", "bf16"):
            raise ValueError(f"unknown OpenVINO peer {spec!r}: static or dynamic, optionally -f32 or -bf16")
        self.name = f"openvino-{spec}"
        self.command = [python, __file__, "serve", ir_dir, "--shape", shape, "--precision", precision or "default"]
        self.command += ["--height", str(height), "--width", str(width), "--threads", str(threads or 0)]
        self.process: subprocess.Popen[str] | None = None
        self.images = ""

    def load(self) -> dict[str, Any]:
        self.images = tempfile.mkdtemp(prefix="sdopt-peer-")  # the worker's images, one at a time
        self.process = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        return self._read()

    def render(self, prompt: str, *, seed: int, steps: int, guidance: float, height: int, width: int) -> Any:
        import numpy as np

        from sdopt.bench import PeerImage

        assert self.process is not None and self.process.stdin is not None
        path = os.path.join(self.images, f"{seed}.npy")
        request = {"prompt": prompt, "seed": seed, "steps": steps, "guidance": guidance}
        request |= {"height": height, "width": width, "image_path": path}
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        reply = self._read()
        image = np.load(path)
        os.remove(path)
        return PeerImage(image, reply["denoiser_calls_s"], reply["decode_calls_s"], reply["peak_memory_gb"])

    def close(self) -> None:
        if self.process is not None:
            if self.process.stdin is not None:
                self.process.stdin.close()  # the worker's request loop ends
            try:
                self.process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.process.kill()
            self.process = None
        shutil.rmtree(self.images, ignore_errors=True)

    def _read(self) -> dict[str, Any]:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith(REPLY):
                return json.loads(line[len(REPLY) :])
        raise RuntimeError(f"the OpenVINO worker exited with code {self.process.wait()}: {' '.join(self.command)}")


def compare(args: argparse.Namespace) -> None:
    import torch

    from sdopt.bench import bench
    from sdopt.simulation.architectures import real_pipeline

    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="sdopt-openvino-"))
    torch_dir, ir_dir = work / "sd15", work / "sd15-openvino"
    if not (torch_dir / "model_index.json").exists():
        print(f"writing the random-weight sd15 pipeline to {torch_dir}", file=sys.stderr)
        real_pipeline("sd15").save_pretrained(torch_dir)
    if not (ir_dir / "model_index.json").exists():
        print(f"exporting it with optimum-intel to {ir_dir}", file=sys.stderr)
        subprocess.run([args.peer_python, __file__, "export", str(torch_dir), str(ir_dir)], check=True)
    peers = [
        OpenVINOPeer(args.peer_python, str(ir_dir), spec, args.size, args.size, args.threads)
        for spec in args.peers.split(",")
    ]
    result = bench(
        "sd15",
        [name for name in args.tiers.split(",") if name],
        steps=args.steps,
        height=args.size,
        width=args.size,
        guidance=7.5,
        runs=args.runs,
        warmup=args.warmup,
        peers=peers,
        progress=lambda message: print(f"\r\033[K{message}", end="", file=sys.stderr, flush=True),
    )
    print("", file=sys.stderr)
    print(result.table())
    if args.json:
        result.save_json(args.json)
        Path(args.json).with_suffix(".md").write_text(result.to_markdown())
        result.plot(Path(args.json).with_suffix(".png"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    phases = parser.add_subparsers(dest="phase", required=True)
    run = phases.add_parser("compare", help="sdopt's tiers and the OpenVINO peers, interleaved")
    run.add_argument("--peer-python", required=True, help="python of the OpenVINO virtualenv")
    run.add_argument("--tiers", default="baseline,balanced,fast")
    run.add_argument(
        "--peers",
        default="static,dynamic",
        help="OpenVINO peers: static or dynamic shape, optionally -f32/-bf16 (default: OpenVINO's own precision)",
    )
    run.add_argument("--steps", type=int, default=4)
    run.add_argument("--runs", type=int, default=2)
    run.add_argument("--warmup", type=int, default=1)
    run.add_argument("--size", type=int, default=512)
    run.add_argument("--threads", type=int, default=2, help="torch and OpenVINO threads (0: library default)")
    run.add_argument("--workdir", help="keep the saved and exported pipelines here and reuse them")
    run.add_argument("--json", help="write JSON here, and the .md table and .png chart beside it")
    exporter = phases.add_parser("export")
    exporter.add_argument("torch_dir")
    exporter.add_argument("ir_dir")
    server = phases.add_parser("serve")
    server.add_argument("ir_dir")
    server.add_argument("--shape", choices=["static", "dynamic"], required=True)
    server.add_argument("--precision", choices=["default", "f32", "bf16"], default="default")
    server.add_argument("--height", type=int, required=True)
    server.add_argument("--width", type=int, required=True)
    server.add_argument("--threads", type=int, default=0, help="0: OpenVINO's default")
    args = parser.parse_args()
    if args.phase == "compare":
        compare(args)
    elif args.phase == "export":
        export(args.torch_dir, args.ir_dir)
    else:
        serve(args.ir_dir, args.shape, args.precision, args.height, args.width, args.threads)


if __name__ == "__main__":
    main()
