"""`--ray-address` and $RAY_ADDRESS: a bad form is a usage error before anything loads, and a cluster that does
not answer is one line within seconds (Ray alone retries for minutes). No Ray is started here: these tests run in
a process where Ray is not initialised (tests/test_ray.py keeps its own instance to its module)."""

from __future__ import annotations

import socket
import time

import pytest
from typer.testing import CliRunner

from fama_cli.main import app
from fama_core import cluster
from fama_core.checkpoints import BUNDLED

CLIP = BUNDLED["fama-demo"] / "clips" / "en_bag.wav"

pytest.importorskip("ray", reason="the ray extra is not installed (pip install -e '.[ray]')")


@pytest.fixture
def no_model(monkeypatch):
    """Fails the test if the model is loaded: every address check comes before it."""
    import fama_core.checkpoints

    def load_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the Ray address was checked")

    monkeypatch.setattr(fama_core.checkpoints, "load_model", load_model)
    import ray

    assert not ray.is_initialized()


def run(*args, env: dict[str, str] | None = None) -> tuple[int, list[str], float]:
    started = time.perf_counter()
    result = CliRunner().invoke(app, ["transcribe", str(CLIP), "--model", "fama-demo", "--quiet", *args],
                                env=env, catch_exceptions=False)
    return result.exit_code, result.stderr.splitlines(), time.perf_counter() - started


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_ray_address_in_the_environment_is_one_line_in_seconds(no_model, tmp_path):
    port = free_port()
    code, lines, seconds = run("--ray", "-o", str(tmp_path), env={"RAY_ADDRESS": f"127.0.0.1:{port}"})
    assert (code, lines) == (1, [f"error: cannot join Ray: no Ray cluster answers at 127.0.0.1:{port} "
                                 "(Connection refused)"])
    assert seconds < cluster.CONNECT_TIMEOUT + 5 and not any(tmp_path.iterdir())


@pytest.mark.parametrize("address", ["garbage!!", "127.0.0.1", "127.0.0.1:70000", "http://head:8265", "ray://",
                                     "ray://head"])
def test_a_malformed_ray_address_is_a_usage_error(no_model, address):
    code, lines, _ = run("--ray-address", address)
    assert (code, lines) == (2, [f"error: --ray-address {address!r} is not a Ray address: use auto or HOST:PORT"])


def test_a_malformed_ray_address_in_the_environment_names_it(no_model):
    code, lines, _ = run("--ray", env={"RAY_ADDRESS": "garbage!!"})
    assert (code, lines) == (2, ["error: $RAY_ADDRESS 'garbage!!' is not a Ray address: use auto or HOST:PORT"])


@pytest.mark.parametrize("where", ["--ray-address", "$RAY_ADDRESS"])
def test_a_ray_client_address_is_refused_with_the_way_that_works(no_model, where):
    """Ray Data jobs fail through Ray Client (ray-project/ray#42739), after the model was shipped."""
    address = "ray://127.0.0.1:10001"
    args, env = ((["--ray-address", address], None) if where == "--ray-address"
                 else (["--ray"], {"RAY_ADDRESS": address}))
    code, lines, _ = run(*args, env=env)
    assert (code, lines) == (2, [f"error: {where} {address!r}: Ray Client (ray://) cannot run Ray Data jobs: run "
                                 "fama on the cluster instead, with `ray job submit --address http://HEAD:8265 -- "
                                 "fama transcribe ... --ray` (docs/scale.md)"])


def test_a_cluster_that_never_answers_gives_up_after_the_timeout(monkeypatch):
    def create_connection(address, timeout):
        assert timeout == cluster.CONNECT_TIMEOUT
        raise TimeoutError("timed out")

    monkeypatch.setattr(cluster.socket, "create_connection", create_connection)
    with pytest.raises(ConnectionError) as e:
        cluster.reach("10.1.2.3:6379")
    assert str(e.value) == "no Ray cluster answers at 10.1.2.3:6379 (no answer within 5 s)"


@pytest.mark.parametrize("address,expected", [
    (None, None), ("auto", "auto"), ("local", None), ("head:6379", "head:6379"), (" 10.0.0.5:6379", "10.0.0.5:6379"),
    ("head-svc.ray.svc:6379", "head-svc.ray.svc:6379"), ("[::1]:6379", "[::1]:6379")])
def test_the_address_forms_ray_takes(monkeypatch, address, expected):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert cluster.resolve_address(address) == expected


def test_a_listening_port_is_reached():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        cluster.reach(f"127.0.0.1:{s.getsockname()[1]}")
