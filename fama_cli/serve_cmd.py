"""`fama serve`: the OpenAI-compatible HTTP server (registered on the app in fama_cli.main)."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import re
import socket
from typing import Annotated

import typer
from rich.markup import escape

from fama_cli.main import app, err, fail, set_threads
from fama_cli.transcribe_cmd import (
    BatchSizeOpt,
    BeamSizeOpt,
    CtcWeightOpt,
    Dtype,
    GreedyOpt,
    LocalFilesOnlyOpt,
    MaxChunkSecondsOpt,
    MaxCpsOpt,
    MaxCueSecondsOpt,
    MaxLineCountOpt,
    MaxLineWidthOpt,
    MaxTokensOpt,
    MinCueSecondsOpt,
    Model,
    NoRepeatNgramSizeOpt,
    ThreadsOpt,
    decode_options,
    load_for_cli,
    subtitle_options,
)

DIST = "fama-speech"  # the distribution name in pyproject.toml, for the install hint
SERVE_MODULES = ("fastapi", "uvicorn", "python_multipart")
LOOPBACK = ("127.0.0.1", "localhost", "::1")


@app.command()
def serve(
    model: Model = "fama-small",
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: every interface)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port (0: any free port, printed at start)")] = 8000,
    device: Annotated[str | None, typer.Option(help="cpu, cuda or cuda:N: one device (default: the first GPU, "
                                                    "else the CPU)")] = None,
    dtype: Dtype = "auto",
    threads: ThreadsOpt = None,
    api_key: Annotated[str | None, typer.Option(envvar="FAMA_API_KEY", help="Require 'Authorization: Bearer KEY' "
                                                "(or set FAMA_API_KEY)", show_default=False)] = None,
    max_upload_mb: Annotated[float, typer.Option(help="Largest upload accepted (413 beyond)")] = 200.0,
    max_requests: Annotated[int, typer.Option(help="Requests in progress at once (503 with Retry-After beyond)")]
    = 64,
    timeout: Annotated[float, typer.Option(help="Seconds a request may take, upload included (504 beyond)")]
    = 600.0,
    idle_timeout: Annotated[float, typer.Option(help="Seconds an upload may send nothing before it is dropped "
                                                     "(408)")] = 30.0,
    batch_wait_ms: Annotated[float, typer.Option(help="An idle decoder waits at most this long for requests still "
                                                      "being read, to decode them together")] = 500.0,
    readers: Annotated[int, typer.Option(help="Uploads decoded and cut at pauses in parallel")] = 4,
    beam_size: BeamSizeOpt = 5,
    ctc_weight: CtcWeightOpt = 0.2,
    no_repeat_ngram_size: NoRepeatNgramSizeOpt = 5,
    greedy: GreedyOpt = False,
    max_tokens: MaxTokensOpt = 200,
    batch_size: BatchSizeOpt = 16,
    max_chunk_seconds: MaxChunkSecondsOpt = 30.0,
    max_line_width: MaxLineWidthOpt = 42,
    max_line_count: MaxLineCountOpt = 2,
    max_cue_seconds: MaxCueSecondsOpt = 7.0,
    min_cue_seconds: MinCueSecondsOpt = 0.8,
    max_cps: MaxCpsOpt = 20.0,
    local_files_only: LocalFilesOnlyOpt = False,
) -> None:
    """OpenAI-compatible server: POST /v1/audio/transcriptions and /v1/audio/translations (docs/serve.md)."""
    if any(importlib.util.find_spec(m) is None for m in SERVE_MODULES):
        raise fail(escape(f'fama serve needs the serve extra: pip install "{DIST}[serve]"'), 1)
    _check_limits(port=port, max_upload_mb=max_upload_mb, max_requests=max_requests, timeout=timeout,
                  idle_timeout=idle_timeout, batch_wait_ms=batch_wait_ms, readers=readers)
    if api_key is not None and not re.fullmatch(r"[\x21-\x7e]+", api_key):
        raise fail("--api-key (or FAMA_API_KEY) must be printable ASCII without spaces: an HTTP header cannot "
                   "carry other characters, so no client could send it", 2)
    transcribe = decode_options("transcribe", "auto", beam_size=beam_size, ctc_weight=ctc_weight,
                                no_repeat_ngram_size=no_repeat_ngram_size, greedy=greedy, max_tokens=max_tokens,
                                batch_size=batch_size, max_chunk_seconds=max_chunk_seconds)
    subtitles = subtitle_options(max_line_width, max_line_count, max_cue_seconds, min_cue_seconds, max_cps)
    import uvicorn

    from fama_core.server import BatchPool, ServeOptions, compute_thread, create_app

    listener = _listen(host, port)  # before the model loads: a taken port or a bad address fails at once
    port = listener.getsockname()[1]

    def load() -> tuple:
        set_threads(threads)  # before loading: `--dtype auto` probes with these threads
        return load_for_cli(model, device, dtype, local_files_only, one_device=True)

    compute = compute_thread()  # loads the model, then decodes
    loaded, tokenizer, devices = compute.submit(load).result()
    options = ServeOptions(
        transcribe=dataclasses.replace(transcribe, readers=readers), subtitles=subtitles,
        batch_wait=batch_wait_ms / 1000, max_upload_bytes=int(max_upload_mb * 2**20), max_requests=max_requests,
        timeout=timeout, idle_timeout=idle_timeout, api_key=api_key or None)
    pool = BatchPool(loaded, tokenizer, model, options, compute)
    if host not in LOOPBACK and not api_key:
        err.print(f"[yellow]warning:[/] listening on {host} without --api-key: anyone who can reach it can use it",
                  soft_wrap=True)
    err.print(f"fama serve: {model} on {devices[0]} at http://{host}:{port}/v1 "
              f"({'API key required' if api_key else 'no API key'}); Ctrl-C stops it", markup=False, soft_wrap=True)
    config = uvicorn.Config(create_app(pool), host=host, port=port, log_level="warning",
                            timeout_graceful_shutdown=5)
    uvicorn.Server(config).run(sockets=[listener])


def _check_limits(**values: float) -> None:
    """Each limit is a finite number in its range (exit 2 naming the first that is not)."""
    ranges = {"port": (0, 65535), "max_upload_mb": (0.001, math.inf), "max_requests": (1, math.inf),
              "timeout": (0.001, math.inf), "idle_timeout": (0.001, math.inf), "batch_wait_ms": (0, math.inf),
              "readers": (1, math.inf)}
    for name, value in values.items():
        low, high = ranges[name]
        if not (math.isfinite(value) and low <= value <= high):
            bounds = (f"from {low:g} to {high:g}" if math.isfinite(high) else f"at least {low:g}" if
                      isinstance(value, int) else f"a finite number of at least {low:g}")
            raise fail(f"--{name.replace('_', '-')} must be {bounds}, not {value:g}", 2)


def _listen(host: str, port: int) -> socket.socket:
    """The server's listening socket, bound as uvicorn binds it (exit 1 with one line when it cannot be)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise fail(escape(f"cannot listen on {host}:{port}: {e.strerror or e}"), 1) from None
    sock.set_inheritable(True)
    return sock
