#!/usr/bin/env bash
# `make demo`: the whole pipeline on the bundled sample, in a fresh local workspace (CPU).
# Every step is a plain `kalmix` command, so this file doubles as a tour of the CLI.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${KALMIX_PY:-python}
KALMIX="$PY -m kalmix"
WS=${KALMIX_DEMO_WS:-demo-ws}
SHARED=${KALMIX_SHARED_DATA:-../shared/data}
export KALMIX_HOME=$WS

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
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

if [ -d "$SHARED" ]; then
  step "3. ingest the training splits of the shared evaluation data (never its test splits)"
  run ingest "$SHARED/banking77/train.csv" --name banking77-train --category banking-intent --language en
  run ingest "$SHARED/snips/train.csv" --name snips-train --category voice-assistant-intent --language en
else
  step "3. $SHARED not found: skipping the shared training splits"
fi

step "4. the catalog"
run catalog datasets
run catalog categories --task-type sts
run catalog show faq

step "done"
echo "Open the dashboard on this workspace with: kalmix --workspace $WS dashboard"
