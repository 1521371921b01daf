#!/usr/bin/env bash
# `make demo`: the whole loop in a fresh local workspace (CPU), on real raw corpora:
# raw corpora -> dedup -> language ID -> semantic dedup -> synthesis -> decontamination ->
# consistency filter -> hard-negative mining -> raw and curated mixtures -> a static-embedding
# proxy trained on each over several seeds -> the lift with its spread -> MiniLM trained once ->
# reference scores -> the dashboard. Every step is a plain `kalmix` command, so this file
# doubles as a tour of the CLI; benchmarks/curation_lift.py runs the same recipe at full size.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${KALMIX_PY:-python}
KALMIX="$PY -m kalmix"
WS=${KALMIX_DEMO_WS:-demo-ws}
SHARED=${KALMIX_SHARED_DATA:-../shared/data}
LIMIT=${KALMIX_DEMO_CORPUS_LIMIT:-20000} # rows sampled from each raw corpus
BUDGET=${KALMIX_DEMO_BUDGET:-40000}      # rows per mixture (the proxy sees each twice)
SEEDS=${KALMIX_DEMO_SEEDS:-3}            # proxy seeds per mixture
STEPS=${KALMIX_DEMO_STEPS:-10}           # MiniLM training steps
EVAL_LIMIT=${KALMIX_DEMO_EVAL_LIMIT:-100} # rows per split for MiniLM's quick check
PERSONAS=${KALMIX_DEMO_PERSONAS:-2}     # passages turned into personas for synthesis
export KALMIX_HOME=$WS KALMIX_EVAL_DATA=$SHARED
START=$SECONDS

step() { printf '\n\033[1m== %s\033[0m  (%ss)\n' "$*" "$((SECONDS - START))"; }
run() { printf '$ kalmix %s\n' "${*}"; $KALMIX "$@"; }
# names of the training datasets matching a SQL condition over the datasets view (personas
# are synthesis seeds, not training pairs)
datasets() {
  $KALMIX catalog datasets --where "NOT is_eval AND rows > 0 AND category <> 'persona' AND ($1)" --json \
    | $PY -c 'import json,sys; print(" ".join(d["name"] for d in json.load(sys.stdin)))'
}

step "1. a fresh workspace"
rm -rf "$WS"
run init "$WS"

step "2. raw corpora: real text from Debian packages and Python's own docs ($LIMIT rows each)"
run corpora list
ADDED=0
for name in $($KALMIX corpora list --json | $PY -c \
  'import json,sys; print(" ".join(c["name"] for c in json.load(sys.stdin)))'); do
  # As root a missing package is apt-get installed; otherwise `corpora add` says what to run.
  if run corpora add "$name" --limit "$LIMIT"; then ADDED=$((ADDED + 1)); fi
done
if [ "$ADDED" -eq 0 ]; then
  echo "no raw corpus could be installed here: falling back to the bundled sample"
  $PY -m corpus.sample "$WS/sample" >/dev/null
  run ingest "$WS/sample/faq_multilingual.jsonl" --name faq --category faq-retrieval
  run ingest "$WS/sample/python_docs.jsonl" --name python-docs --category python-docs-qa
  run ingest "$WS/sample/sts_pairs.jsonl" --name sts-sample --category multilingual-sts
  run ingest "$WS/sample/intents.jsonl" --name support-intents --category banking-intent
fi

if [ -d "$SHARED" ]; then
  step "3. the training splits of the shared evaluation data (never its test splits)"
  run ingest "$SHARED/banking77/train.csv" --name banking77-train --category banking-intent --language en
  run ingest "$SHARED/snips/train.csv" --name snips-train --category voice-assistant-intent --language en
else
  step "3. $SHARED not found: no shared training splits, no evaluation below"
fi
run catalog datasets
RAW=()
for name in $(datasets "true"); do RAW+=(-d "$name@v1"); done

step "4. exact + MinHash near-dup dedup across every training dataset"
run dedup --across "not is_eval"

step "5. language ID on the text that carries the language (keep confident predictions)"
for name in $(datasets "task_type = 'retrieval'"); do run langid "$name" --field positive --min-score 0.5; done
for name in $(datasets "task_type = 'classification'"); do run langid "$name" --field query --min-score 0.5; done

step "6. semantic dedup of retrieval pairs whose passage and query both repeat (minilm-static: MiniLM distilled to a token table)"
run semdedup --across "task_type = 'retrieval' AND NOT is_eval" --field positive --also query --model minilm-static

step "7. persona-driven synthesis with SmolLM2-135M on CPU (tiny budget)"
SEED_DOCS=$(datasets "name = 'python-docs'")
if [ -n "$SEED_DOCS" ]; then
  run synth personas python-docs --n "$PERSONAS" --max-tokens 48
  run synth generate --personas python-docs-personas --task-types retrieval --per-persona 1 \
    --name synth --max-tokens 160
fi

if [ -d "$SHARED" ]; then
  step "8. decontamination against every evaluation set"
  for name in $(datasets "true"); do run decontaminate "$name" --against "$SHARED"; done
fi

step "9. ranking-consistency filter and hard-negative mining (retrieval data)"
for name in $(datasets "task_type = 'retrieval'"); do
  run filter consistency "$name" --top-k 50 --model minilm-static
  run mine "$name" --negatives 3 --model minilm-static
done

step "10. two mixtures from the same sources and the same spec: raw (first versions) and curated"
CURATED=()
for name in $(datasets "true"); do CURATED+=(-d "$name"); done
MIX=(--weighting temperature --tau 2 --cap-share 0.25 --budget "$BUDGET" --seed 0)
run mix create raw "${RAW[@]}" "${MIX[@]}"
run mix create curated "${CURATED[@]}" "${MIX[@]}"
run mix diff raw@v1 curated@v1

step "11. the proxy: a static-embedding model (random init) trained on each, $SEEDS seeds"
for seed in $(seq 0 $((SEEDS - 1))); do
  for mix in raw curated; do
    run train "$mix@v1" --arch static --out-run "proxy-$mix-s$seed" --seed "$seed" --epochs 2 \
      --negatives 3
  done
done

if [ -d "$SHARED" ]; then
  step "12. evaluate every proxy on the full local suite, and the lift of curation"
  PROXIES=()
  for seed in $(seq 0 $((SEEDS - 1))); do PROXIES+=("proxy-raw-s$seed" "proxy-curated-s$seed"); done
  run eval run "${PROXIES[@]}" --suite local --batch-size 512
  run eval compare --runs 'proxy-*' --by-mixture --baseline raw --means
fi

step "13. the transformer path: all-MiniLM-L6-v2 fine-tuned once on curated ($STEPS steps)"
run train curated@v1 --out-run minilm-curated --batch-size 16 --max-steps "$STEPS" \
  --max-length 48 --negatives 1 --lr 5e-5 --temperature 0.05
if [ -d "$SHARED" ]; then
  run eval run minilm-curated --suite local --subsets en --limit "$EVAL_LIMIT"
  if [ -f "$SHARED/reference_scores.csv" ]; then
    step "14. published scores of reference models, beside the demo's runs"
    run eval import-reference "$SHARED/reference_scores.csv"
    # the tasks both sides have: the local suite's versions of four published MTEB tasks
    run eval compare --runs 'proxy-*-s0' --tasks Banking77Classification,STSBenchmark,BQ,LCQMC
  fi
fi

step "done in $((SECONDS - START))s"
echo
echo "Open the dashboard on this workspace with: kalmix --workspace $WS dashboard"
