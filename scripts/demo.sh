#!/usr/bin/env bash
# `make demo`: the whole loop on the bundled sample, in a fresh local workspace (CPU):
# ingest -> dedup -> language ID -> semantic dedup -> synthesis -> decontamination ->
# consistency filter -> hard-negative mining -> raw and curated mixtures -> train both ->
# evaluate both -> compare. Every step is a plain `kalmix` command, so this file doubles as
# a tour of the CLI. Budgets are tiny so that it runs in minutes on two cores; the same
# commands with larger budgets are the real recipe.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${KALMIX_PY:-python}
KALMIX="$PY -m kalmix"
WS=${KALMIX_DEMO_WS:-demo-ws}
SHARED=${KALMIX_SHARED_DATA:-../shared/data}
STEPS=${KALMIX_DEMO_STEPS:-10}      # training steps per model (same for raw and curated)
EVAL_LIMIT=${KALMIX_DEMO_EVAL_LIMIT:-100} # rows per split of each local task (0: all)
PERSONAS=${KALMIX_DEMO_PERSONAS:-4} # passages turned into personas for synthesis
export KALMIX_HOME=$WS KALMIX_EVAL_DATA=$SHARED
START=$SECONDS

step() { printf '\n\033[1m== %s\033[0m  (%ss)\n' "$*" "$((SECONDS - START))"; }
run() { printf '$ kalmix %s\n' "${*}"; $KALMIX "$@"; }

step "1. a fresh workspace"
rm -rf "$WS"
run init "$WS"

step "2. ingest the bundled sample (hand-written multilingual files + Python's own docs)"
$PY -m corpus.sample "$WS/sample" >/dev/null
run ingest "$WS/sample/faq_multilingual.jsonl" --name faq --category faq-retrieval
run ingest "$WS/sample/python_docs.jsonl" --name python-docs --category python-docs-qa
run ingest "$WS/sample/sts_pairs.jsonl" --name sts-sample --category multilingual-sts
run ingest "$WS/sample/intents.jsonl" --name support-intents --category banking-intent
TRAIN=(faq python-docs sts-sample support-intents)

if [ -d "$SHARED" ]; then
  step "3. ingest the training splits of the shared evaluation data (never its test splits)"
  run ingest "$SHARED/banking77/train.csv" --name banking77-train --category banking-intent --language en
  run ingest "$SHARED/snips/train.csv" --name snips-train --category voice-assistant-intent --language en
  TRAIN+=(banking77-train snips-train)
else
  step "3. $SHARED not found: skipping the shared training splits (and the evaluation below)"
fi
run catalog datasets

step "4. exact + MinHash near-dup dedup across every training dataset"
run dedup --across "not is_eval"

step "5. language ID: keep confident predictions"
for name in "${TRAIN[@]}"; do run langid "$name" --min-score 0.3; done

step "6. semantic dedup (paraphrased passages) of the retrieval data, after MinHash"
# On the passages: the sample's python-docs queries come from one template ("How do I use X in
# Python?"), which semantic dedup on queries would (rightly) call paraphrases of each other.
run semdedup --across "task_type = 'retrieval'" --field positive

step "7. persona-driven synthesis with SmolLM2-135M on CPU (tiny budget)"
run synth personas python-docs --n "$PERSONAS" --max-tokens 48
run synth generate --personas python-docs-personas --task-types retrieval --per-persona 1 \
  --name synth --max-tokens 160
# SmolLM2-135M is a tiny model: when none of its outputs pass validation there is no `synth`.
SYNTH=$($KALMIX catalog datasets --where "name = 'synth' AND rows > 0" --json \
  | $PY -c 'import json,sys; print(" ".join(d["name"] for d in json.load(sys.stdin)))')
TRAIN+=($SYNTH)

if [ -d "$SHARED" ]; then
  step "8. decontamination against the evaluation sets"
  for name in "${TRAIN[@]}"; do run decontaminate "$name" --against "$SHARED"; done
fi

step "9. ranking-consistency filter and hard-negative mining (retrieval data)"
for name in faq python-docs $SYNTH; do
  run filter consistency "$name" --top-k 20
  run mine "$name" --negatives 3 --range 3:30
done

step "10. two mixtures from the same sources: raw (first versions) and curated (latest)"
RAW=()
for name in "${TRAIN[@]}"; do [[ " $SYNTH " == *" $name "* ]] || RAW+=(-d "$name@v1"); done
CURATED=()
for name in "${TRAIN[@]}"; do CURATED+=(-d "$name"); done
run mix create raw "${RAW[@]}" --budget 3000 --cap-share 0.4 --seed 0
run mix create curated "${CURATED[@]}" --budget 3000 --cap-share 0.4 --seed 0
run mix diff raw@v1 curated@v1

step "11. train the same base model (all-MiniLM-L6-v2) on each, same budget"
for mix in raw curated; do
  run train "$mix@v1" --out-run "minilm-$mix" --batch-size 16 --max-steps "$STEPS" \
    --max-length 48 --negatives 1 --lr 5e-5 --temperature 0.05
done

if [ -d "$SHARED" ]; then
  step "12. evaluate both on the local mteb suite (English subsets, $EVAL_LIMIT rows per split)"
  LIMIT=(); [ "$EVAL_LIMIT" -gt 0 ] && LIMIT=(--limit "$EVAL_LIMIT")
  for mix in raw curated; do run eval run "minilm-$mix" --suite local --subsets en "${LIMIT[@]}"; done
  run eval compare --runs minilm-raw,minilm-curated --samples --means
fi

step "done in $((SECONDS - START))s"
run catalog show faq
echo
echo "Open the dashboard on this workspace with: kalmix --workspace $WS dashboard"
