#!/usr/bin/env bash
# The synthetic EN<->IT recipe, end to end, through the public `fama` commands:
#   data (make_data.py) -> fama data spm -> fama train --stage 1 (ASR) -> fama average
#   -> fama train --stage 2 (ASR+ST, fine-tuned from the stage-1 average) -> fama average
#   -> fp16 model folder -> fama eval (ASR en/it, ST en->it/it->en; seen- and unseen-voice test sets)
#   -> fama transcribe --srt / fama translate on one test clip.
#
#   bash recipes/synthetic_en_it/run.sh [--smoke] [--data DIR] [WORK_DIR]
#
# WORK_DIR (default recipes/synthetic_en_it/work, git-ignored) receives everything. A stage whose output is
# there already is skipped (its time is kept from the run that made it), so an interrupted run resumes
# at the stage it was in: delete WORK_DIR/<stage> to redo one. --data DIR puts (or finds) the corpus in DIR
# instead of WORK_DIR/data; make_data.py reuses the wavs that are there. --smoke: a tiny corpus, a tiny model
# and a few updates, every stage and command in a few minutes (CI); espeak-ng voices only when festival is
# missing. Hyper-parameters can be overridden from the environment (see the defaults below).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SMOKE=0
WORK=""
DATA=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --smoke) SMOKE=1 ;;
    --data) DATA="$2"; shift ;;
    --data=*) DATA="${1#--data=}" ;;
    -h|--help) sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "unknown option $1" >&2; exit 2 ;;
    *) WORK="$1" ;;
  esac
  shift
done
WORK="${WORK:-$HERE/work}"
mkdir -p "$WORK"
WORK="$(cd "$WORK" && pwd)"
DATA="${DATA:-$WORK/data}"
mkdir -p "$DATA"
DATA="$(cd "$DATA" && pwd)"
TIMES="$WORK/times.tsv"
LOG="$WORK/logs"
mkdir -p "$LOG"
export PYTHONUNBUFFERED=1

if ! command -v espeak-ng >/dev/null 2>&1; then
  if [[ $SMOKE == 1 && ! -e "$DATA/summary.json" ]]; then
    echo "warning: espeak-ng is not installed (apt-get install espeak-ng): recipe smoke run skipped" >&2
    exit 0
  fi
  [[ -e "$DATA/summary.json" ]] || { echo "espeak-ng is needed to make the data (see README.md)" >&2; exit 1; }
fi

# ------------------------------------------------------------------------------------- hyper-parameters
if [[ $SMOKE == 1 ]]; then
  : "${VOCAB:=120}" "${D_MODEL:=48}" "${ENC_LAYERS:=2}" "${CTC_LAYER:=1}" "${DEC_LAYERS:=1}" "${HEADS:=2}"
  : "${MAX_TOKENS:=2000}" "${UPD1:=4}" "${UPD2:=4}" "${SAVE_EVERY:=2}" "${AVG_LAST:=2}" "${BEAM:=2}"
  : "${LR1:=2e-3}" "${WARMUP1:=2}" "${LR2:=1e-3}" "${WARMUP2:=2}"
else
  : "${N_TRAIN:=2000}" "${VOCAB:=256}" "${D_MODEL:=144}" "${ENC_LAYERS:=3}" "${CTC_LAYER:=2}" "${DEC_LAYERS:=2}"
  : "${HEADS:=4}" "${MAX_TOKENS:=6000}" "${UPD1:=2600}" "${UPD2:=2000}" "${SAVE_EVERY:=100}" "${AVG_LAST:=5}"
  : "${BEAM:=5}" "${LR1:=2e-3}" "${WARMUP1:=500}" "${LR2:=1.5e-3}" "${WARMUP2:=200}"
fi
: "${DROPOUT:=0.1}" "${DTYPE:=fp32}" "${JOBS:=2}" "${SPECAUGMENT:=0}"
# torch threads per process (all cores by default). On a machine shared with other busy processes THREADS=1
# is several times faster than oversubscribed threads that spin waiting for each other.
if [[ -n "${THREADS:-}" ]]; then export OMP_NUM_THREADS="$THREADS" MKL_NUM_THREADS="$THREADS"; fi
SPEC=()
[[ $SPECAUGMENT == 1 ]] || SPEC=(--no-specaugment)

# ------------------------------------------------------------------------------------- helpers
T0=$(date +%s)
touch "$TIMES"
# stage NAME DONE_FILE CMD...: run CMD unless DONE_FILE exists; record its wall time in times.tsv
stage() {
  local name="$1" done_file="$2"
  shift 2
  if [[ -e "$done_file" ]] && grep -q "^$name	" "$TIMES"; then
    echo "== $name: done already ($done_file), skipped"
    return 0
  fi
  echo "== $name: $*"
  local t=$(date +%s)
  "$@"
  local dt=$(( $(date +%s) - t ))
  grep -v "^$name	" "$TIMES" > "$TIMES.tmp" || true
  printf '%s\t%s\n' "$name" "$dt" >> "$TIMES.tmp"
  mv "$TIMES.tmp" "$TIMES"
  echo "== $name: ${dt} s"
}

make_data() {
  local args=(--out "$DATA" --jobs "$JOBS")
  if [[ $SMOKE == 1 ]]; then args+=(--smoke); else args+=(--n-train "$N_TRAIN"); fi
  if [[ -n "${NO_FESTIVAL:-}" ]] || ! command -v festival >/dev/null 2>&1; then
    echo "festival not found: espeak-ng voices only (one held out per language)"
    HERE="$HERE" python3 - "${args[@]}" <<'EOF'
import os
import sys

sys.path.insert(0, os.environ["HERE"])
import make_data as m
V = m.Voice
m.VOICES = (V("espeak", "en-us", "en"), V("espeak", "en-gb", "en"), V("espeak", "en-us+f2", "en", held_out=True),
            V("espeak", "it", "it"), V("espeak", "it+f3", "it"), V("espeak", "it+m3", "it", held_out=True))
m.main(sys.argv[1:])
EOF
  else
    python3 "$HERE/make_data.py" "${args[@]}"
  fi
}

train_args() {  # common `fama train` options
  echo --data "$DATA" --model-config "$WORK/model.json" --max-tokens "$MAX_TOKENS" --update-freq 1 \
    --save-interval-updates "$SAVE_EVERY" --keep-interval-updates "$AVG_LAST" --save-interval 0 \
    --log-interval 10 --dtype "$DTYPE" --device cpu --num-workers 0 --seed 1 "${SPEC[@]}"
}

resume() {  # an interrupted training stage goes on exactly where it stopped (fama train --resume)
  [[ -e "$WORK/$1/checkpoint_last.pt" ]] && echo --resume || true
}

to_fp16() {  # the averaged model as an fp16 fama model folder (what tests/fixtures/tiny_trained holds)
  python3 - "$WORK/avg2" "$WORK/model_fp16" <<'EOF'
import sys

import torch

from fama_core.checkpoints import load_model, save_model

model, tok = load_model(sys.argv[1], device="cpu")
save_model(model, tok, sys.argv[2], dtype=torch.float16)
print(f"wrote {sys.argv[2]} ({model.num_parameters():,} parameters, float16)")
EOF
}

evaluate() {
  mkdir -p "$WORK/eval.tmp"
  for split in test test_unseen_voice; do
    for lang in en it; do
      fama eval "$DATA/asr_${lang}_${split}.tsv" --model "$WORK/model_fp16" --task asr --device cpu \
        --beam-size "$BEAM" --batch-size 32 --report "$WORK/eval.tmp/asr_${lang}_${split}.json" --overwrite -q
    done
    for pair in en_it it_en; do
      fama eval "$DATA/st_${pair}_${split}.tsv" --model "$WORK/model_fp16" --task st --device cpu \
        --beam-size "$BEAM" --batch-size 32 --report "$WORK/eval.tmp/st_${pair}_${split}.json" --overwrite -q
    done
  done
  rm -rf "$WORK/eval"
  mv "$WORK/eval.tmp" "$WORK/eval"
}

cli_demo() {  # the user-facing commands on one test clip of each language
  local out="$WORK/demo.tmp"
  rm -rf "$out"
  mkdir -p "$out"
  local en_wav it_wav
  en_wav="$DATA/$(awk -F'\t' 'NR==2 {print $2}' "$DATA/asr_en_test.tsv")"
  it_wav="$DATA/$(awk -F'\t' 'NR==2 {print $2}' "$DATA/asr_it_test.tsv")"
  fama transcribe "$en_wav" --lang en -m "$WORK/model_fp16" --device cpu -o "$out/transcribe_en" -f txt,srt -q
  fama transcribe "$it_wav" --lang auto -m "$WORK/model_fp16" --device cpu -o "$out/transcribe_it" -f txt,json -q
  fama translate "$en_wav" --to it -m "$WORK/model_fp16" --device cpu -o "$out/translate_en_it" -f txt -q
  fama translate "$it_wav" --to en -m "$WORK/model_fp16" --device cpu -o "$out/translate_it_en" -f txt -q
  rm -rf "$WORK/demo"
  mv "$out" "$WORK/demo"
  for f in "$WORK"/demo/*/*.txt; do echo "  $(basename "$(dirname "$f")"): $(tr '\n' ' ' < "$f")"; done
}

# ------------------------------------------------------------------------------------- the recipe
cat > "$WORK/model.json" <<EOF
{"d_model": $D_MODEL, "encoder_layers": $ENC_LAYERS, "encoder_heads": $HEADS, "ctc_encoder_layer": $CTC_LAYER,
 "subsampler_channels": $(( D_MODEL * 2 > 256 ? 256 : D_MODEL * 2 )), "conv_kernel": 15,
 "decoder_dim": $D_MODEL, "decoder_ffn_dim": $(( D_MODEL * 4 )), "decoder_layers": $DEC_LAYERS,
 "decoder_heads": $HEADS, "dropout": $DROPOUT, "attention_dropout": $DROPOUT, "activation_dropout": $DROPOUT}
EOF

stage data "$DATA/summary.json" make_data
stage spm "$WORK/spm.model" fama data spm "$DATA/asr_en_train.tsv" "$DATA/asr_it_train.tsv" \
  -o "$WORK/spm" --vocab-size "$VOCAB"

# Stage 1: ASR on both languages, from scratch.
stage train1 "$WORK/avg1/config.json" bash -c "set -o pipefail; fama train --save-dir '$WORK/stage1' $(resume stage1) \
  --stage 1 --train-subset asr_en_train,asr_it_train --spm '$WORK/spm.model' --dict '$WORK/spm.txt' \
  $(train_args) --lr-scheduler inverse_sqrt --lr $LR1 --warmup-updates $WARMUP1 --warmup-init-lr 1e-7 \
  --max-update $UPD1 --json 2>&1 | tee -a '$LOG/train1.log' | grep --line-buffered -E '\"(start|valid|checkpoint)\"|\"update\": [0-9]*0,' && fama average --dir '$WORK/stage1' --last $AVG_LAST \
  -o '$WORK/avg1'"
# Stage 2: ASR+ST (each batch ASR with p=0.5, else ST), fine-tuned from the stage-1 average.
stage train2 "$WORK/avg2/config.json" bash -c "set -o pipefail; fama train --save-dir '$WORK/stage2' $(resume stage2) \
  --stage 2 --finetune-from '$WORK/avg1' --train-subset st_en_it_train,st_it_en_train --p-sampling-asr 0.5 \
  $(train_args) --lr-scheduler inverse_sqrt --lr $LR2 --warmup-updates $WARMUP2 --warmup-init-lr 1e-7 \
  --max-update $UPD2 --json 2>&1 | tee -a '$LOG/train2.log' | grep --line-buffered -E '\"(start|valid|checkpoint)\"|\"update\": [0-9]*0,' && fama average --dir '$WORK/stage2' --last $AVG_LAST \
  -o '$WORK/avg2'"
stage fp16 "$WORK/model_fp16/config.json" to_fp16
stage eval "$WORK/eval/st_it_en_test_unseen_voice.json" evaluate
stage cli "$WORK/demo" cli_demo

# ------------------------------------------------------------------------------------- results
python3 - "$WORK" <<'EOF'
import json
import sys
from pathlib import Path

work = Path(sys.argv[1])
rows = [("ASR en", "asr_en", "wer"), ("ASR it", "asr_it", "wer"), ("ST en->it", "st_en_it", "bleu"),
        ("ST it->en", "st_it_en", "bleu")]
print("\n| task | metric | test (seen voices) | test (unseen voices) |\n|---|---|---|---|")
for label, name, metric in rows:
    cells = []
    for split in ("test", "test_unseen_voice"):
        rep = json.loads((work / "eval" / f"{name}_{split}.json").read_text())
        cells.append(f"{rep['overall'][metric]:.1f}")
    print(f"| {label} | {metric.upper()} | {cells[0]} | {cells[1]} |")
times = dict(line.split("\t") for line in (work / "times.tsv").read_text().splitlines() if line)
print("\n| stage | wall time (s) |\n|---|---|")
for k, v in times.items():
    print(f"| {k} | {v} |")
total = sum(int(v) for v in times.values())
print(f"| total | {total} ({total / 60:.1f} min) |")
size = sum(f.stat().st_size for f in (work / "model_fp16").iterdir())
print(f"\nfp16 model: {work / 'model_fp16'} ({size / 1e6:.1f} MB)")
EOF
echo "this invocation: $(( $(date +%s) - T0 )) s wall"
