"""`fama train`, `fama average`, `fama data manifest`, `fama data spm` (registered on the app in fama_cli.main).

A preset (`--preset small|medium`, FBK's commands for the chosen `--stage`, or a JSON file) gives every
hyper-parameter; flags given on the command line override it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from fama_cli.main import app, data_app, err, fail, out, set_threads

_MODEL_FLAGS = {"encoder_layers", "decoder_layers", "d_model", "encoder_heads", "decoder_heads", "ctc_encoder_layer"}


def _opt(text: str, *names: str) -> Any:
    return typer.Option(*names, help=text, show_default=False)


def _subsets(value: str | None, root: Path | None) -> list[str] | None:
    """`a,b,c`: manifest paths, or names of `<name>.tsv` files under --data (fairseq's --train-subset)."""
    if value is None:
        return None
    paths = []
    for name in (v.strip() for v in value.split(",") if v.strip()):
        p = Path(name)
        if root is not None and not p.exists():
            p = root / (name if name.endswith(".tsv") else f"{name}.tsv")
        if not p.exists():
            raise fail(f"manifest {p} not found", 2)
        paths.append(str(p))
    return paths


def _progress_printer(quiet: bool, as_json: bool):
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    state: dict[str, Any] = {"progress": None, "task": None}

    def on_log(r: dict) -> None:
        if as_json:
            print(json.dumps(r), flush=True)
            return
        if quiet:
            return
        ev = r.get("event")
        if ev == "start":
            out.print(f"training {r['parameters']:,} parameters on {r['train_utterances']:,} utterances "
                      f"({r['skipped_summary']}), {r['world_size']} worker(s) on {r['device']}"
                      + (f", resumed at update {r['update']} (epoch {r['epoch']})" if r["resumed"] else ""),
                      soft_wrap=True)
        elif ev == "train":
            p = state["progress"]
            if p is None:
                p = Progress(TextColumn("update {task.completed}"), BarColumn(), TextColumn("{task.description}"),
                             TimeRemainingColumn(), console=err, transient=False)
                p.start()
                state["progress"] = p
                state["task"] = p.add_task("", total=r.get("max_update") or None)
            p.update(state["task"], completed=r["update"],
                     description=f"loss {r['loss']:.3f}  lr {r['lr']:.2e}  {r['frames_per_s']:,.0f} frames/s")
        elif ev == "valid":
            scores = "  ".join(f"{k} {v:.2f}" for k, v in r.items() if k not in ("event", "update", "time"))
            (state["progress"].console if state["progress"] else out).print(f"valid @ {r['update']}: {scores}")
        elif ev == "warning":
            err.print(f"[yellow]warning:[/] {r.get('message')} {r.get('ids', '')}")

    def close() -> None:
        if state["progress"] is not None:
            state["progress"].stop()

    return on_log, close


@app.command()
def train(
    save_dir: Annotated[Path, typer.Option(help="Folder for checkpoints, logs and the tokenizer")],
    train_subset: Annotated[str | None, _opt("Training manifests: comma-separated paths, or names of "
                                             "<name>.tsv under --data")] = None,
    valid_subset: Annotated[str | None, _opt("Dev manifests (loss + greedy WER/BLEU every "
                                             "--validate-interval-updates)")] = None,
    data: Annotated[Path | None, _opt("Folder holding the subsets' <name>.tsv")] = None,
    stage: Annotated[int, typer.Option(help="1: ASR; 2: ASR+ST (fine-tune the averaged stage-1 model)")] = 1,
    preset: Annotated[str, typer.Option(help="FBK's recipe: small, medium, or a JSON options file")] = "small",
    spm: Annotated[Path | None, _opt("SentencePiece model (from `fama data spm`)")] = None,
    dict_path: Annotated[Path | None, _opt("fairseq dictionary of the SentencePiece model", "--dict")] = None,
    finetune_from: Annotated[str | None, _opt("Start from these weights: training checkpoint, fama model "
                                              "folder, fairseq .pt or alias (optimizer state is not reused)")]
    = None,
    model_config: Annotated[Path | None, _opt("JSON file of model dimensions (ModelConfig fields) overriding "
                                              "the preset's")] = None,
    encoder_layers: Annotated[int | None, _opt("Conformer layers")] = None,
    decoder_layers: Annotated[int | None, _opt("Transformer decoder layers")] = None,
    d_model: Annotated[int | None, _opt("Encoder width")] = None,
    encoder_heads: Annotated[int | None, _opt("Encoder attention heads")] = None,
    decoder_heads: Annotated[int | None, _opt("Decoder attention heads")] = None,
    ctc_encoder_layer: Annotated[int | None, _opt("Encoder layer of the intermediate CTC")] = None,
    lr: Annotated[float | None, _opt("Peak learning rate")] = None,
    lr_scheduler: Annotated[str | None, _opt("inverse_sqrt, piecewise_warmup or fixed")] = None,
    warmup_updates: Annotated[int | None, _opt("Warm-up updates")] = None,
    warmup_init_lr: Annotated[float | None, _opt("Learning rate at update 0")] = None,
    intermediate_lr: Annotated[float | None, _opt("piecewise_warmup: rate reached after the first warm-up")]
    = None,
    intermediate_warmup_updates: Annotated[int | None, _opt("piecewise_warmup: length of the first warm-up")]
    = None,
    weight_decay: Annotated[float | None, _opt("Decoupled weight decay (fairseq's adam)")] = None,
    clip_norm: Annotated[float | None, _opt("Gradient-norm clipping (0: off)")] = None,
    adam_betas: Annotated[str | None, _opt("Adam betas, e.g. 0.9,0.98")] = None,
    max_tokens: Annotated[int | None, _opt("Input frames (10 ms) per batch, padding included")] = None,
    max_sentences: Annotated[int | None, _opt("Most utterances per batch")] = None,
    update_freq: Annotated[int | None, _opt("Batches per worker accumulated into one update")] = None,
    max_source_positions: Annotated[int | None, _opt("Skip utterances longer than this many input frames")]
    = None,
    max_target_positions: Annotated[int | None, _opt("Skip utterances with more target tokens")] = None,
    max_update: Annotated[int | None, _opt("Stop after this many updates (0: no limit)")] = None,
    max_epoch: Annotated[int | None, _opt("Stop after this many epochs (0: no limit)")] = None,
    label_smoothing: Annotated[float | None, _opt("Label smoothing of the decoder loss")] = None,
    ctc_weight: Annotated[float | None, _opt("Weight of the intermediate CTC loss")] = None,
    primary_loss_weight: Annotated[float | None, _opt("Weight of the decoder loss")] = None,
    auxiliary_loss_weight: Annotated[float | None, _opt("Weight of the top CTC loss")] = None,
    p_sampling_asr: Annotated[float | None, _opt("Stage 2: probability that a batch is trained as ASR")] = None,
    no_specaugment: Annotated[bool, typer.Option("--no-specaugment", help="Train without SpecAugment")] = False,
    seed: Annotated[int | None, _opt("Random seed")] = None,
    dtype: Annotated[str | None, _opt("auto (bfloat16 on capable GPUs, else float32), float32, bfloat16 or "
                                                "float16 (or fp32, bf16, fp16, half)")] = None,
    device: Annotated[str | None, _opt("cpu, cuda (default: cuda:LOCAL_RANK when available)")] = None,
    num_workers: Annotated[int | None, _opt("Data-loading processes per worker (0: in the training process)")]
    = None,
    save_interval_updates: Annotated[int | None, _opt("Checkpoint every N updates")] = None,
    keep_interval_updates: Annotated[int | None, _opt("Keep the last K numbered checkpoints (0: all)")] = None,
    save_interval: Annotated[int | None, _opt("Checkpoint every N epochs (0: only at the end)")] = None,
    validate_interval_updates: Annotated[int | None, _opt("Validate every N updates (0: at epoch ends)")] = None,
    valid_max_utterances: Annotated[int | None, _opt("Decode at most this many dev utterances (0: all)")] = None,
    log_interval: Annotated[int | None, _opt("Log every N updates")] = None,
    tensorboard: Annotated[Path | None, _opt("Also write TensorBoard scalars here (needs tensorboard)")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --save-dir exactly where it "
                                                          "stopped")] = False,
    threads: Annotated[int | None, typer.Option(min=1, help="CPU threads for torch (default: torch's choice)",
                                                show_default=False)] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print every log record as a JSON line")] = False,
) -> None:
    """Train a FAMA model with FBK's recipe (stage 1: ASR; stage 2: ASR+ST). Works under torchrun (DDP).

    Exit codes: 0 done, 1 training failed (e.g. no readable audio), 2 usage error (bad options or files).
    """
    from fama_core.checkpoints import CheckpointError
    from fama_core.training import TrainOptions, load_preset, merge_options
    from fama_core.training import train as run_training
    from fama_core.training.trainer import check_options

    set_threads(threads)
    try:
        base = load_preset(preset, stage)
    except (ValueError, OSError, json.JSONDecodeError) as e:
        raise fail(str(e), 2) from None
    model: dict[str, Any] = {}
    if model_config is not None:
        try:
            model.update(json.loads(model_config.read_text()))
        except (OSError, json.JSONDecodeError) as e:
            raise fail(f"{model_config}: {e}", 2) from None
    local = locals()
    model.update({k: local[k] for k in _MODEL_FLAGS if local[k] is not None})
    schedule = {"name": lr_scheduler, "lr": lr, "warmup_updates": warmup_updates, "warmup_init_lr": warmup_init_lr,
                "intermediate_lr": intermediate_lr, "intermediate_warmup_updates": intermediate_warmup_updates}
    loss = {"label_smoothing": label_smoothing, "ctc_weight": ctc_weight, "primary_weight": primary_loss_weight,
            "auxiliary_weight": auxiliary_loss_weight}
    data_opts = {"max_tokens": max_tokens, "max_sentences": max_sentences, "max_source_positions":
                 max_source_positions, "max_target_positions": max_target_positions, "p_sampling_asr": p_sampling_asr,
                 "num_workers": num_workers, "spec_augment": False if no_specaugment else None}
    top = {"save_dir": str(save_dir), "stage": stage, "train": _subsets(train_subset, data),
           "valid": _subsets(valid_subset, data), "spm": spm and str(spm), "dict_path": dict_path and str(dict_path),
           "finetune_from": finetune_from, "weight_decay": weight_decay, "clip_norm": clip_norm,
           "adam_betas": [float(b) for b in adam_betas.split(",")] if adam_betas else None,
           "update_freq": update_freq, "max_update": max_update, "max_epoch": max_epoch, "seed": seed, "dtype": dtype,
           "device": device, "save_interval_updates": save_interval_updates,
           "keep_interval_updates": keep_interval_updates, "save_interval_epochs": save_interval,
           "validate_interval_updates": validate_interval_updates, "valid_max_utterances": valid_max_utterances,
           "log_interval": log_interval, "tensorboard": tensorboard and str(tensorboard), "resume": resume,
           "schedule": schedule, "loss": loss, "data": data_opts}

    def given(d: dict) -> dict:
        return {k: given(v) if isinstance(v, dict) else v for k, v in d.items() if v is not None}

    overrides = given(top)
    if model:
        overrides["model_overrides"] = model
    try:
        options = TrainOptions.from_dict(merge_options(base, overrides))
        check_options(options)
    except (TypeError, ValueError) as e:
        raise fail(f"bad options: {e}", 2) from None
    on_log, close = _progress_printer(quiet, as_json)
    try:
        last = run_training(options, on_log=on_log)
    except (ValueError, CheckpointError, FileNotFoundError) as e:
        close()
        raise fail(str(e)) from None
    close()
    if not quiet and not as_json:
        out.print(f"done: {last}")


@app.command()
def average(
    checkpoints: Annotated[list[Path] | None, typer.Argument(help="Checkpoint files to average (default: the "
                                                                   "--last N of --dir)", show_default=False)] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="fama model folder to write")] = Path("avg"),
    directory: Annotated[Path | None, _opt("Training folder (--save-dir) to take the last checkpoints from",
                                           "--dir")] = None,
    last: Annotated[int, typer.Option(help="How many of the most recent numbered checkpoints")] = 25,
    upper_bound: Annotated[int | None, _opt("Ignore checkpoints after this update")] = None,
    spm: Annotated[Path | None, _opt("SentencePiece model (default: tokenizer.model beside the checkpoints)")]
    = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the model files of an existing output "
                                                                "folder (nothing else in it is touched)")] = False,
) -> None:
    """Average checkpoint weights as FBK's average_checkpoints.py (the -asr and final FAMA models are --last 25)."""
    from fama_core.checkpoints import CheckpointError
    from fama_core.training import average as run_average

    if not checkpoints and directory is None:
        raise fail("give checkpoint files or --dir", 2)
    if last < 1:
        raise fail(f"--last must be at least 1, not {last}", 2)
    try:
        folder = run_average(checkpoints or None, directory, last, output, spm, upper_bound, overwrite)
    except (CheckpointError, ValueError, OSError) as e:
        raise fail(str(e)) from None
    meta = json.loads((folder / "config.json").read_text())
    out.print(f"wrote {folder} (average of {len(meta['averaged_from'])}: {', '.join(meta['averaged_from'])})")


@data_app.command("manifest")
def data_manifest(
    source: Annotated[Path, typer.Argument(help="Folder of audio + transcripts (x.wav + x.txt), or a CSV/TSV/JSONL "
                                                "table with columns audio, text[, translation, id, speaker, "
                                                "src_lang, tgt_lang]")],
    output: Annotated[Path, typer.Argument(help="Manifest TSV to write")],
    lang: Annotated[str, typer.Option("--lang", "-l", help="Spoken language (rows without src_lang)")],
    tgt_lang: Annotated[str | None, _opt("Translation language (rows with a translation)")] = None,
    text_suffix: Annotated[str, typer.Option(help="Transcript file beside each audio file")] = ".txt",
    translation_suffix: Annotated[str | None, _opt("Translation file beside each audio file, e.g. .it.txt")]
    = None,
    absolute: Annotated[bool, typer.Option("--absolute", help="Write absolute audio paths")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing OUTPUT (never an input)")]
    = False,
) -> None:
    """Build a training manifest (fairseq's speech-to-text TSV) and fill n_frames."""
    from fama_core.outputs import PlanError
    from fama_core.training import build_manifest

    if translation_suffix and not tgt_lang:
        raise fail("--translation-suffix needs --tgt-lang", 2)
    try:
        n, problems = build_manifest(source, output, lang, tgt_lang, text_suffix, translation_suffix, not absolute,
                                     overwrite=overwrite)
    except PlanError as e:
        raise fail(str(e), 2) from None
    except (OSError, ValueError, KeyError) as e:
        raise fail(str(e)) from None
    for p in problems[:20]:
        err.print(f"[yellow]skipped:[/] {escape(p)}", soft_wrap=True)
    if len(problems) > 20:
        err.print(f"[yellow]... and {len(problems) - 20} more skipped[/]")
    out.print(f"wrote {escape(str(output))}: {n} utterances ({len(problems)} skipped)", soft_wrap=True)
    if n == 0:
        raise typer.Exit(1)


@data_app.command("spm")
def data_spm(
    manifests: Annotated[list[Path], typer.Argument(help="Manifests whose transcripts and translations to learn")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Prefix: writes PREFIX.model and PREFIX.txt")],
    vocab_size: Annotated[int, typer.Option(help="Pieces, specials and language tags included")] = 16000,
    model_type: Annotated[str, typer.Option(help="unigram, bpe, char or word")] = "unigram",
    langs: Annotated[str | None, _opt("Language tags to add, e.g. en,it (default: the manifests' languages)")]
    = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing PREFIX.model and PREFIX.txt "
                                                                "(never an input)")] = False,
) -> None:
    """Train a SentencePiece model + fairseq dictionary as FBK's gen_vocab does (with <lang:xx> tags)."""
    from fama_core.outputs import PlanError
    from fama_core.tokenizer import train_spm
    from fama_core.training import manifest_texts

    try:
        texts, seen = manifest_texts(manifests)
        tags = [x.strip() for x in langs.split(",")] if langs else seen
        tok = train_spm(texts, output, vocab_size, model_type=model_type, langs=tags, overwrite=overwrite,
                        protect=manifests)
    except PlanError as e:
        raise fail(str(e), 2) from None
    except (OSError, ValueError, RuntimeError) as e:
        raise fail(str(e)) from None
    out.print(f"wrote {tok.model_path} and {tok.dict_path}: {tok.vocab_size} ids with <ctc_blank>, "
              f"languages {', '.join(tok.languages)}")
