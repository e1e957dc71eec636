"""The `make soak` report: passing delivery plans per contract, summed over its pytest runs.

Each soak run adds its tally to a JSON file (`ONCEFLOW_SOAK_REPORT`, one per backend);
`python -m tests.support.soak DIR` prints the whole campaign per backend at the end. A plan that
loses or doubles an effect fails its check and the run, so every counted plan lost and
doubled nothing: the `lost` and `doubled` columns are 0 by construction.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

Tally = dict[str, dict[str, int]]

COLUMNS = ("plans", "deliveries", "faults", "effects")

BACKENDS = {
    "Memory": "memory",
    "Sqlite": "SQLite",
    "Fenced": "DynamoDB (moto)",
    "Upsert": "DynamoDB (moto)",
    "Optimistic": "DynamoDB (moto)",
    "Table": "Azure Table (Azurite)",
    "Cosmos": "Cosmos DB (server)",
}
"""Contract class name prefixes (`TestFencedExactlyOnce` -> `Fenced`) and their backend."""


def backend_of(contract: str) -> str:
    """The backend a contract class (`TestUpsertExactlyOnce/lanes`) runs on."""
    name = contract.removeprefix("Test")
    for prefix, backend in BACKENDS.items():
        if name.startswith(prefix):
            return backend
    return name


def add_to_report(path: str, tally: Tally) -> None:
    """Add one run's tally to the report file (created on first use)."""
    file = Path(path)
    report: Tally = json.loads(file.read_text()) if file.exists() else {}
    for name, row in tally.items():
        into = report.setdefault(name, dict.fromkeys(COLUMNS, 0))
        for column in COLUMNS:
            into[column] += row[column]
    file.write_text(json.dumps(report, indent=1, sort_keys=True))


def table_lines(tally: Tally, *, by_backend: bool = False) -> list[str]:
    """The table: one row per contract, or per backend and plan kind."""
    rows: dict[str, Counter[str]] = {}
    for name, row in sorted(tally.items()):
        kind = "lane plans" if name.endswith("/lanes") else "delivery plans"
        label = f"{backend_of(name)}, {kind}" if by_backend else name
        rows.setdefault(label, Counter()).update(row)
    header = ("", *COLUMNS, "lost", "doubled")
    lines = ["{:<44} {:>7} {:>11} {:>8} {:>9} {:>5} {:>8}".format(*header)]
    for label, row in rows.items():
        values = (f"{row[c]:,}" for c in COLUMNS)
        lines.append("{:<44} {:>7} {:>11} {:>8} {:>9} {:>5} {:>8}".format(label, *values, 0, 0))
    return lines


def main(argv: list[str]) -> int:
    """Print the campaign's table per backend from the report files in a folder."""
    (folder,) = argv
    tally: Tally = {}
    for file in sorted(Path(folder).glob("*.json")):
        for name, row in json.loads(file.read_text()).items():
            into = tally.setdefault(name, dict.fromkeys(COLUMNS, 0))
            for column in COLUMNS:
                into[column] += row[column]
    print("\n".join(table_lines(tally, by_backend=True)))
    print()
    print("\n".join(table_lines(tally)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
