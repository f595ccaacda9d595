"""sdopt.serve: requests, the Ray-free replica, and a real local Ray Serve app of two tiny replicas."""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any

import numpy as np
import pytest

from sdopt import Preset
from sdopt.errors import PresetMismatchError
from sdopt.serve.replica import Replica
from sdopt.serve.requests import GenerateRequest, InvalidRequest
from sdopt.testing import fake_capabilities

PRESET = Preset("serving", ("vae_slicing",))

pytestmark = pytest.mark.slow  # the whole file runs in CI and with -m slow, not in the quick default


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"{}", "prompt"),
        (b'{"prompt": "x", "steps": 0}', "steps"),
        (b'{"prompt": "x", "steps": "4"}', "steps"),
        (b'{"prompt": "x", "height": 100}', "height"),
        (b'{"prompt": "x", "guidance": -1}', "guidance"),
        (b'{"prompt": "x", "sampler": "euler"}', "sampler"),
        (b"not json", "body"),
    ],
)
def test_a_malformed_request_names_the_field(body: bytes, field: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        GenerateRequest.parse(body)
    assert caught.value.body()["detail"][0]["loc"][-1] == field


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt": "x", "height": 4096, "width": 4096, "steps": 500}, "height"),  # hours of work, then OOM
        ({"prompt": "x", "height": 2048, "width": 2048, "steps": 400}, "steps"),  # in size, too many steps for it
        ({"prompt": "x" * 1_000_000}, "prompt"),  # a 1 MB prompt held a replica 21 s
        ({"prompt": "x", "negative_prompt": "y" * 5000}, "negative_prompt"),
    ],
)
def test_a_request_beyond_the_limits_is_refused_naming_the_field(body, field) -> None:
    with pytest.raises(InvalidRequest) as caught:
        GenerateRequest.parse(body)
    (error,) = caught.value.body()["detail"]
    assert error["loc"][-1] == field and error["type"] == "too_large"


def test_limits_are_configurable_and_a_request_within_them_passes() -> None:
    from sdopt.serve.requests import Limits

    request = GenerateRequest.parse({"prompt": "x", "height": 1024, "width": 1024, "steps": 50})
    assert request.height == 1024
    with pytest.raises(InvalidRequest):
        GenerateRequest.parse({"prompt": "x", "height": 64, "width": 64}, Limits(pixels=32 * 32))


def test_two_replicas_make_identical_images_and_reports() -> None:
    first, second = Replica("tiny-sd", PRESET, warmup=False), Replica("tiny-sd", PRESET.to_dict(), warmup=False)
    requests = [GenerateRequest("a fox", steps=2, seed=3), GenerateRequest("a owl", steps=2, seed=4)]
    assert first.generate(requests) == second.generate(requests)
    # Batched with other requests or alone, a seed makes the same image up to the rounding of
    # batched kernels.
    alone, batched = (_pixels(png) for png in (first.generate(requests[:1])[0], second.generate(requests)[0]))
    assert np.abs(alone - batched).max() <= 2
    assert first.describe()["applied"] == second.describe()["applied"] == ["vae_slicing"]


def _pixels(png: bytes) -> np.ndarray:
    import io

    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)), dtype=np.int16)


def test_a_preset_from_another_machine_refuses_to_start() -> None:
    foreign = Preset(
        "serving", PRESET.entries, fingerprint="0123456789ab", made_on=fake_capabilities("cuda").fingerprint_facts()
    )
    with pytest.raises(PresetMismatchError, match="device: 'cuda' -> 'cpu'"):
        Replica("tiny-sd", foreign, warmup=False)


def test_reconfigure_applies_a_new_preset_or_keeps_the_old_one() -> None:
    replica = Replica("tiny-sd", PRESET, warmup=False)
    before = replica.generate([GenerateRequest("x", steps=2)])
    assert replica.reconfigure(Preset("tiled", ("vae_tiling",)))["status"] == "applied"
    assert replica.describe()["applied"] == ["vae_tiling"]
    refused = replica.reconfigure(Preset("gpu", ("fuse_qkv",), made_on={"device": "cuda"}, fingerprint="ffffffffffff"))
    assert refused["status"] == "refused, old preset kept" and "other capabilities" in refused["why"]
    assert replica.describe()["applied"] == ["vae_tiling"]
    assert replica.reconfigure(PRESET)["status"] == "applied"
    assert replica.generate([GenerateRequest("x", steps=2)]) == before
    assert replica.reconfigure(PRESET)["status"] == "unchanged"


def _answer(door, body: Any, generate=None, *, method="POST", path="/", content_type="application/json"):
    import asyncio

    async def made(request):
        return b"\x89PNG made"

    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return asyncio.run(door.answer(method, path, {"Content-Type": content_type}, data, generate or made))


def test_the_front_door_refuses_before_the_pipeline_naming_why() -> None:
    import asyncio

    from sdopt.serve.http import FrontDoor, read_capped
    from sdopt.serve.requests import Limits

    door = FrontDoor(limits=Limits(body_bytes=100), describe=lambda: {"pid": 1})
    assert _answer(door, {"prompt": "a fox"}).status == 200
    assert _answer(door, {"prompt": "a fox"}, content_type="application/json; charset=utf-8").status == 200
    plain = _answer(door, {"prompt": "a fox"}, content_type="text/plain")  # a cross-origin form's type
    assert plain.status == 415 and "application/json" in plain.detail()
    big = _answer(door, {"prompt": "x" * 200})
    assert big.status == 422 and big.detail()[0]["loc"] == ["body"] and big.detail()[0]["type"] == "too_large"
    announced = asyncio.run(  # refused on its Content-Length, whatever arrived
        door.answer("POST", "/", {"content-type": "application/json", "content-length": "100000"}, b"{}", None)
    )
    assert announced.status == 422

    async def chunks():
        for _ in range(1000):
            yield b"x" * 64

    assert len(asyncio.run(read_capped(chunks(), 100))) == 128  # stops one chunk past the limit
    assert _answer(door, b"", method="GET").status == 405
    hidden = _answer(door, b"", method="GET", path="/report")
    assert hidden.status == 404 and "expose_report=True" in hidden.detail()
    door.expose_report = True
    assert json.loads(_answer(door, b"", method="GET", path="/report").body) == {"pid": 1}


def test_a_full_replica_sheds_load_with_503_and_a_slow_one_answers_504() -> None:
    import asyncio

    from sdopt.serve.http import FrontDoor
    from sdopt.serve.requests import Limits

    door = FrontDoor(limits=Limits(max_queued=2, timeout_s=5))

    async def scenario():
        release = asyncio.Event()

        async def held(request):
            await release.wait()
            return b"png"

        def post():
            return door.answer("POST", "/", {"content-type": "application/json"}, b'{"prompt": "x"}', held)

        first, second = asyncio.ensure_future(post()), asyncio.ensure_future(post())
        await asyncio.sleep(0.01)
        third = await post()  # answered at once: the replica already holds two
        release.set()
        return third, await first, await second

    third, first, second = asyncio.run(scenario())
    assert third.status == 503 and third.headers == {"retry-after": "1"} and "holds 2 requests" in third.detail()
    assert first.status == second.status == 200 and door.pending == 0

    async def slow(request):
        await asyncio.sleep(1.0)
        return b"png"

    door.limits = Limits(timeout_s=0.05)

    async def late_then_count():
        answer = await door.answer("POST", "/", {"content-type": "application/json"}, b'{"prompt": "x"}', slow)
        still_running = door.pending  # the call goes on after the 504: it still holds its place
        await asyncio.sleep(1.2)
        return answer, still_running

    late, still_running = asyncio.run(late_then_count())
    assert late.status == 504 and "0.05 s" in late.detail()
    assert still_running == 1 and door.pending == 0


def test_serve_limits_from_a_config_name_the_bad_field() -> None:
    from sdopt.serve.requests import Limits

    assert Limits.from_config({"timeout_s": 2.5, "pixels": 4096}) == Limits(timeout_s=2.5, pixels=4096)
    current = Limits(pixels=4096)
    assert Limits.from_config({"timeout_s": 2.5}, base=current) == Limits(timeout_s=2.5, pixels=4096)
    with pytest.raises(ValueError, match="max_queued must be a positive integer"):
        Limits.from_config(Limits(max_queued=0))  # an instance is checked too
    for bad, field in (({"pixels": -1}, "pixels"), ({"timeout_s": float("nan")}, "timeout_s"), ({"steps": 4}, "steps")):
        with pytest.raises(ValueError, match=field):
            Limits.from_config(bad)


def test_a_failing_call_fails_only_its_own_group() -> None:
    replica = Replica("tiny-sd", None, warmup=False)
    real = replica._call

    def breaks_at_three_steps(requests):
        if requests[0].steps == 3:
            raise RuntimeError("no kernel for this size")
        return real(requests)

    replica._call = breaks_at_three_steps
    results = replica.generate_each([GenerateRequest("a", steps=2), GenerateRequest("b", steps=3)])
    assert results[0][:4] == b"\x89PNG"
    assert isinstance(results[1], RuntimeError) and "no kernel" in str(results[1])
    with pytest.raises(RuntimeError, match="no kernel"):
        replica.generate([GenerateRequest("b", steps=3)])


def test_sizes_the_pipeline_cannot_make_are_refused_up_front() -> None:
    replica = Replica("tiny-flux", None, warmup=False)
    errors = replica.check_request(GenerateRequest("x", height=8, width=24))
    assert [e["loc"] for e in errors] == [["body", "height"], ["body", "width"]]
    assert "FluxPipeline makes sides in multiples of 16, got 8" in errors[0]["msg"]
    assert replica.check_request(GenerateRequest("x", height=32, width=48)) == []


def test_a_reconfiguration_that_breaks_calls_is_rolled_back() -> None:
    from sdopt.optimization import Optimization
    from sdopt.registry import register, unregister

    def apply(self, pipe, anatomy, caps, config):
        def broken(*args, **kwargs):
            raise RuntimeError("every call fails now")

        pipe.unet.forward = broken
        return lambda: pipe.unet.__dict__.pop("forward", None)

    register(type("BreaksCalls", (Optimization,), {"name": "breaks_calls", "kind": "layout", "apply": apply}))
    try:
        replica = Replica("tiny-sd", PRESET, warmup=False)
        before = replica.generate([GenerateRequest("x", steps=2)])
        record = replica.reconfigure(Preset("broken", ("breaks_calls",)))
    finally:
        unregister("breaks_calls")
    assert record["status"] == "failed, old preset kept"
    assert "the verification call failed: RuntimeError: every call fails now" in record["why"]
    assert replica.describe()["applied"] == ["vae_slicing"]
    assert replica.generate([GenerateRequest("x", steps=2)]) == before


# ---- a real Ray Serve app (local Ray, tiny pipelines, bounded time)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Any:
    ray = pytest.importorskip("ray")
    serve = pytest.importorskip("ray.serve")
    import sdopt.serve

    port = _free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    path = tmp_path_factory.mktemp("serve") / "preset.toml"
    PRESET.save(path)
    app = sdopt.serve.deployment(
        "tiny-sd",
        preset=path,
        num_replicas=2,
        max_batch_size=2,
        ray_actor_options={"num_cpus": 0.5},
        expose_report=True,
    )
    serve.run(app, name="default", route_prefix="/")
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    ray.shutdown()


def _post(
    url: str, body: Any, timeout: float = 120, content_type: str = "application/json"
) -> tuple[int, bytes, dict[str, str]]:
    import urllib.error
    import urllib.request

    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"content-type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, error.read(), dict(error.headers)


def test_served_replicas_return_the_same_image_and_report(served) -> None:
    import sdopt.serve

    answers = [_post(served, {"prompt": "a fox", "steps": 2, "seed": 5}) for _ in range(8)]
    assert {status for status, _, _ in answers} == {200}
    assert len({body for _, body, _ in answers}) == 1 and answers[0][1][:4] == b"\x89PNG"
    reports = sdopt.serve.reports(replicas=2)
    assert len(reports) == 2
    assert reports[0]["applied"] == reports[1]["applied"] == ["vae_slicing"]
    assert reports[0]["fingerprint"] == reports[1]["fingerprint"]
    with __import__("urllib.request").request.urlopen(f"{served}/report", timeout=60) as response:
        assert json.loads(response.read())["preset"] == "serving@1"


def test_a_malformed_request_gets_422_and_the_replica_keeps_serving(served) -> None:
    status, body, _ = _post(served, {"prompt": "a fox", "steps": "many"})
    assert status == 422 and json.loads(body)["detail"][0]["loc"] == ["body", "steps"]
    assert _post(served, {"prompt": "a fox", "steps": 2})[0] == 200


def test_json_sent_as_plain_text_gets_415_over_http(served) -> None:
    status, body, _ = _post(served, {"prompt": "a fox", "steps": 2}, content_type="text/plain")
    assert status == 415 and "application/json" in json.loads(body)["detail"]


def test_the_deployment_handle_serves_the_same_images(served) -> None:
    from ray import serve

    handle = serve.get_deployment_handle("sdopt", app_name="default")
    png = handle.generate.remote({"prompt": "a fox", "steps": 2, "seed": 5}).result()
    assert png == _post(served, {"prompt": "a fox", "steps": 2, "seed": 5})[1]


def test_killing_a_replica_mid_load_fails_no_request_silently_and_the_app_recovers(served) -> None:
    import ray
    from ray import serve

    statuses: list[int] = []

    def client(seed: int) -> None:
        statuses.append(_post(served, {"prompt": "load", "steps": 2, "seed": seed}, timeout=180)[0])

    threads = [threading.Thread(target=client, args=(seed,)) for seed in range(10)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    victim = next(a for a in ray.util.list_named_actors(all_namespaces=True) if "SERVE_REPLICA" in a["name"])
    ray.kill(ray.get_actor(victim["name"], namespace=victim["namespace"]), no_restart=True)
    for thread in threads:
        thread.join(timeout=240)
    assert len(statuses) == 10  # every request was answered: none hung
    # Served, or refused with a clear server error for the requests the dead replica held.
    assert set(statuses) <= {200, 500, 503} and statuses.count(200) >= 10 - 3
    deadline = time.time() + 180
    while time.time() < deadline:
        status = serve.status().applications["default"].deployments["sdopt"]
        if status.status == "HEALTHY" and status.replica_states.get("RUNNING", 0) == 2:
            break
        time.sleep(2)
    assert status.status == "HEALTHY"
    assert [_post(served, {"prompt": "after", "steps": 2})[0] for _ in range(3)] == [200, 200, 200]


def test_a_preset_for_another_machine_fails_the_replica_start_with_the_differences(served) -> None:
    from ray import serve

    import sdopt.serve

    foreign = Preset(
        "serving", PRESET.entries, fingerprint="0123456789ab", made_on=fake_capabilities("cuda").fingerprint_facts()
    )
    app = sdopt.serve.deployment("tiny-sd", preset=foreign, name="foreign", ray_actor_options={"num_cpus": 0.25})
    with pytest.raises(RuntimeError, match="Deploying application foreign failed"):
        serve.run(app, name="foreign", route_prefix="/foreign")
    status = serve.status().applications["foreign"].deployments["foreign"]
    assert status.status == "DEPLOY_FAILED"
    assert "was frozen on a machine with other capabilities" in status.message
    assert "device: 'cuda' -> 'cpu'" in status.message
    serve.delete("foreign")
