"""Measure the per-event figures `onceflow plan` reads, and write them where it reads them.

Runs the measurements of `benchmarks/aws_vs_powertools.py` (its `measure` and `figures_of`,
imported, not copied: a Kinesis batch, one DynamoDB item written per event, moto server)
for Powertools and each onceflow mode, and with `--azure` those of
`benchmarks/azure_stores.py` (an Event Hubs batch through the function app, Table store,
Azurite); the median of `--repeat` runs per figure. Then writes:

- `benchmarks/results.json`: `onceflow.capacity.results_document(...)`, which `onceflow plan`
  reads first when run from the repository root (`figures: benchmarks/results.json`); the
  `tables` other benchmarks keep there (`aws_vs_powertools.py`'s) are kept;
- `corelib/cost_figures.json`: the same figures in the file the package ships, read when no
  results file is present.

Designs it does not measure (`naive`: the back-of-the-envelope line, one write and one
strongly consistent read per event by definition; `azure-cosmos`; the Azure designs without
`--azure`) are carried over from the shipped file unchanged, and the `source` text says which.

Run: .venv/bin/python benchmarks/cost_figures.py [--records 1000] [--repeat 3] [--azure]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import aws_vs_powertools as aws  # noqa: E402
from onceflow.capacity import Figures, load_figures, results_document  # noqa: E402

SHIPPED = ROOT / "corelib" / "cost_figures.json"
RESULTS = ROOT / "benchmarks" / "results.json"
FIELDS = ("requests", "write_units", "read_units", "runner_us", "items_written")


def measure_aws(records: int, modes: list[str]) -> dict[str, Figures]:
    """One run's first-delivery figures per design (`aws_vs_powertools.measure`, `figures_of`)."""
    return aws.figures_of(aws.measure(records, tuple(modes)))


def measure_azure(events: int) -> dict[str, Figures]:
    """Table requests per event (store and sink) for onceflow and the per-event peer."""
    from azure.data.tables import TableServiceClient

    from benchmarks import azure_stores
    from tests.support.servers import azurite

    found: dict[str, Figures] = {}
    with azurite() as server:
        conn = server.connection_string
        service = TableServiceClient.from_connection_string(conn)
        for label, design in (("batched", "azure-table"), ("naive", "azure-per-event")):
            first = azure_stores.run(service, conn, label, events)[0]
            # Row cells: name, delivery, events, store requests, per event, sink requests,
            # entity writes per event, seconds (azure_stores.run's table).
            requests = (int(first[3]) + int(first[5])) / events
            found[design] = Figures(
                requests=round(requests, 4),
                write_units=round(float(first[6]), 4),
                read_units=0.0,
                runner_us=0.0,  # replaced below by the shipped figure (not measured here)
            )
    return found


def median_figures(runs: list[dict[str, Figures]]) -> dict[str, Figures]:
    """Per design, the median of each figure over the runs."""
    designs = set(runs[0]).intersection(*runs[1:])
    return {
        d: Figures(**{f: statistics.median(getattr(r[d], f) for r in runs) for f in FIELDS})
        for d in sorted(designs)
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (median)")
    parser.add_argument("--modes", default="upsert,optimistic,atomic")
    parser.add_argument("--azure", action="store_true", help="also measure on Azurite")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--shipped", type=Path, default=SHIPPED)
    args = parser.parse_args()
    # What is not measured is carried over from the file the package ships now.
    before = load_figures(SHIPPED)
    if args.repeat < 1 or args.records < 1:
        parser.error("--repeat and --records must be at least 1")
    modes = args.modes.split(",")
    runs = [measure_aws(args.records, modes) for _ in range(args.repeat)]
    measured = median_figures(runs)
    names = ["powertools", *modes]
    if args.azure:
        azure = median_figures([measure_azure(args.records) for _ in range(args.repeat)])
        for design, each in azure.items():
            old = before.get(design)
            runner = old.runner_us if old is not None else 0.0
            measured[design] = Figures(**{**vars(each), "runner_us": runner})
        names += sorted(azure)
    kept = {k: v for k, v in before.items() if k not in measured}
    figures = {**kept, **measured}
    where = "aws_vs_powertools.py on moto" + (", azure_stores.py on Azurite" if args.azure else "")
    source = (
        f"benchmarks/cost_figures.py: medians of {args.repeat} runs of {args.records}-record "
        f"batches ({where}) for {', '.join(names)}; carried over from the shipped file: "
        f"{', '.join(sorted(kept))}"
    )
    today = time.strftime("%Y-%m-%d")
    document = results_document(figures, measured=today, source=source)
    if args.results.exists():
        try:
            tables = json.loads(args.results.read_text()).get("tables")
        except ValueError:
            tables = None
        if isinstance(tables, dict):
            document["tables"] = tables  # other benchmarks' own tables stay
    args.results.write_text(json.dumps(document, indent=2) + "\n")
    shipped = {
        "measured": today,
        "source": source,
        "designs": {d: vars(f) for d, f in sorted(figures.items())},
    }
    args.shipped.write_text(json.dumps(shipped, indent=2) + "\n")
    print(f"{'design':<18}" + "".join(f"{f:>14}" for f in FIELDS))
    for design, each in sorted(figures.items()):
        mark = "" if design in measured else "  (carried over)"
        cells = "".join(f"{getattr(each, f):>14g}" for f in FIELDS)
        print(f"{design:<18}{cells}{mark}")
    print(f"\nwrote {args.results} and {args.shipped}")


if __name__ == "__main__":
    main()
