#!/usr/bin/env bash
# `make demo`: the orders example through `onceflow run` on the local backend, twice.
#
# Run 1 applies every valid order once, skips the duplicated ones, and dead-letters the four
# invalid records on purpose (bad JSON, a negative quantity, a missing user, non-UTF-8
# bytes), so it exits with status 1, which this script expects. Run 2 re-reads the same
# file from the start and applies nothing new: every event is already done.
set -euo pipefail
cd "$(dirname "$0")/../.."

ONCEFLOW=${ONCEFLOW:-.venv/bin/onceflow}
STATE=${DEMO_STATE:-.demo}
INPUT=examples/orders/orders.jsonl
PROCESSOR=examples.orders.processor:OrderProcessor
EXPECTED_LETTERS=4

rm -rf "$STATE"
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "run 1: $INPUT ($(wc -l < "$INPUT") lines, some duplicated, $EXPECTED_LETTERS invalid)"
status=0
"$ONCEFLOW" run "$PROCESSOR" --input "$INPUT" --id-field order_id --state "$STATE" \
    --out "$STATE/totals.jsonl" || status=$?
letters=$(wc -l < "$STATE/dead-letters.jsonl")
if [[ $status -ne 1 || $letters -ne $EXPECTED_LETTERS ]]; then
    echo "demo: expected exit status 1 with $EXPECTED_LETTERS dead letters," \
        "got status $status with $letters" >&2
    exit 1
fi
echo "exit status 1, as expected: the $EXPECTED_LETTERS invalid records are dead letters"

say "the dead letters"
"$ONCEFLOW" dead-letters list --state "$STATE"

say "the order totals (first 3 of $(wc -l < "$STATE/totals.jsonl"))"
head -n 3 "$STATE/totals.jsonl"

say "run 2: the same file again, from the start"
"$ONCEFLOW" run "$PROCESSOR" --input "$INPUT" --id-field order_id --state "$STATE" --from-start
echo "exit status 0: nothing new was applied, every event was already done"

say "the state"
"$ONCEFLOW" state --state "$STATE"
