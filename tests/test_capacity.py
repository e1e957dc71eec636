"""The capacity and cost planner: formulas on known inputs, the shipped figures, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from onceflow.capacity import (
    AWS_DESIGNS,
    AwsPrices,
    AzurePrices,
    Figures,
    dynamodb_line,
    find_figures,
    load_figures,
    load_prices,
    plan_aws,
    plan_azure,
    results_document,
)
from onceflow.cli import main
from onceflow.errors import ConfigurationError

MILLION = 1_000_000


def line(plan: object, component: str) -> float:
    [found] = [x for x in plan.lines if x.component == component]  # type: ignore[attr-defined]
    return float(found.dollars_per_hour)


def test_the_naive_design_is_one_write_and_one_read_per_event_at_list_prices() -> None:
    figures = {"naive": Figures(requests=2, write_units=1, read_units=1, runner_us=0)}
    plan = plan_aws("naive", events_per_second=MILLION, record_bytes=1024, figures=figures)
    # 1M WCU x $0.00065 + 1M RCU x $0.00013 (strongly consistent reads of items <= 4 KB).
    assert line(plan, "DynamoDB") == pytest.approx(650 + 130)
    # 1 KB records: 977 shards by bytes, 1,000 by records per second.
    [kinesis] = [x for x in plan.lines if x.component == "Kinesis shards"]
    assert kinesis.quantity == 1000
    on_demand = plan_aws(
        "naive",
        events_per_second=MILLION,
        record_bytes=1024,
        figures=figures,
        capacity="on-demand",
    )
    assert line(on_demand, "DynamoDB") == pytest.approx(3600 * (0.625 + 0.125))
    bigger = plan_aws("naive", events_per_second=MILLION, record_bytes=3000, figures=figures)
    assert line(bigger, "DynamoDB") == pytest.approx(3 * 650 + 130)


def test_the_shipped_figures_cover_every_design_and_ours_cost_less_than_per_event_idempotency() -> (
    None
):
    figures = load_figures()
    assert set(AWS_DESIGNS) <= set(figures)
    plans = {
        d: plan_aws(d, events_per_second=MILLION, record_bytes=512, figures=figures)
        for d in AWS_DESIGNS
    }
    assert plans["upsert"].dollars_per_hour < plans["powertools"].dollars_per_hour
    assert line(plans["upsert"], "DynamoDB") < line(plans["powertools"], "DynamoDB")
    for design in ("table", "cosmos", "per-event"):
        assert (
            plan_azure(
                design, events_per_second=10_000, record_bytes=512, figures=figures
            ).dollars_per_hour
            > 0
        )


def test_prices_can_be_replaced_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"dynamodb_wcu_hour": 0.001}))
    assert load_prices(AwsPrices, path).dynamodb_wcu_hour == 0.001
    path.write_text(json.dumps({"dynamodb_wcu": 0.001}))
    with pytest.raises(ConfigurationError, match="unknown price 'dynamodb_wcu'"):
        load_prices(AwsPrices, path)


def test_plan_from_the_command_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["plan", "aws", "--events-per-second", "1000000", "--record-bytes", "1024"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "1,000,000 events/s of 1024 B, batches of 100: dollars per hour"
    assert "upsert" in out and "powertools" in out and "$780.00" in out
    assert main(["plan", "azure", "--events-per-second", "5000", "--mode", "table"]) == 0
    assert "Table storage" in capsys.readouterr().out
    for argv, message in (
        (["plan", "aws", "--events-per-second", "10", "--mode", "fast"], "unknown --mode 'fast'"),
        (["plan", "aws", "--events-per-second", "0"], "--events-per-second must be positive"),
        (
            ["plan", "aws", "--events-per-second", "5", "--figures", str(tmp_path / "x")],
            "cannot read figures file",
        ),
        (["plan"], "name a cloud"),
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1


def test_the_classic_line_is_162_50_with_its_assumption_named(
    capsys: pytest.CaptureFixture[str],
) -> None:
    classic = load_prices(AwsPrices, "classic")
    dollars, text = dynamodb_line(classic)
    assert dollars == pytest.approx(162.50)
    assert "$162.50 per hour at provisioned prices for 1,000,000 writes" in text
    assert dynamodb_line(AwsPrices())[0] == pytest.approx(780.0)
    # The naive design's DynamoDB component is that line, whatever the price set.
    figures = {"naive": Figures(requests=2, write_units=1, read_units=1, runner_us=0)}
    plan = plan_aws(
        "naive", events_per_second=MILLION, record_bytes=1024, figures=figures, prices=classic
    )
    assert line(plan, "DynamoDB") == pytest.approx(162.50)
    argv = ["plan", "aws", "--events-per-second", "1000000", "--prices", "classic"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "naive design, the classic line:" in out and "$162.50 per hour" in out
    assert "back-solved" in out  # the assumption is named
    assert "onceflow DynamoDB per hour at this load and these prices: upsert $" in out
    reserved = load_prices(AwsPrices, "reserved-1y")
    assert dynamodb_line(reserved)[0] == pytest.approx(
        1e4 * (150 / 8760 + 0.0128) + 1e4 * (30 / 8760 + 0.0025)
    )


def test_the_planner_reads_the_benchmarks_results_when_present(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    measured = {"naive": Figures(requests=2, write_units=1, read_units=1, runner_us=0)}
    measured["upsert"] = Figures(requests=0.5, write_units=7, read_units=0, runner_us=1)
    (tmp_path / "benchmarks").mkdir()
    results = tmp_path / "benchmarks" / "results.json"
    results.write_text(json.dumps(results_document(measured, measured="x", source="test")))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ONCEFLOW_BENCHMARK_RESULTS", raising=False)
    figures, where = find_figures()
    assert where == str(Path("benchmarks") / "results.json")
    assert figures["upsert"].write_units == 7
    assert main(["plan", "aws", "--events-per-second", "10", "--mode", "upsert"]) == 0
    assert "figures: benchmarks/results.json" in capsys.readouterr().out
    results.write_text(json.dumps({"format": "other/9", "cost_figures": {}}))
    with pytest.raises(ConfigurationError, match="unknown results format 'other/9'"):
        find_figures()
    results.unlink()
    assert find_figures()[1] == "the shipped cost_figures.json"


def test_an_unknown_price_set_names_the_sets(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "aws", "--events-per-second", "5", "--prices", "cheap"]) == 2
    err = capsys.readouterr().err.strip()
    assert "named sets: list, reserved-1y, reserved-3y, classic" in err
    assert len(err.splitlines()) == 1


def test_the_issues_command_prints_the_classic_line_and_ours_beside_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["plan", "aws", "--events-per-second", "1000000", "--record-bytes", "1024"]
    assert main([*argv, "--mode", "upsert"]) == 0
    out = capsys.readouterr().out
    assert (
        "naive design, the classic line: 1,000,000 WCU x $0.00008125 + 1,000,000 RCU x "
        "$0.00008125 = $162.50 per hour at provisioned prices for 1,000,000 writes and "
        "1,000,000 reads per second (`--prices classic`: back-solved, see docs)"
    ) in out
    assert "naive design at these prices: " in out and "= $780.00 per hour" in out
    figures = load_figures()
    classic = load_prices(AwsPrices, "classic")
    ours = plan_aws(
        "upsert", events_per_second=MILLION, record_bytes=1024, figures=figures, prices=classic
    )
    assert (
        "onceflow DynamoDB per hour at this load and the classic prices: "
        f"upsert ${line(ours, 'DynamoDB'):,.2f}"
    ) in out


def test_the_azure_variant_on_known_inputs() -> None:
    figures = {
        "azure-table": Figures(requests=0.02, write_units=1, read_units=0, runner_us=100),
        "azure-cosmos": Figures(requests=1, write_units=2, read_units=1, runner_us=100),
    }
    prices = AzurePrices()
    table = plan_azure(
        "table", events_per_second=20_000, record_bytes=2048, figures=figures, batch_size=100
    )
    [hubs] = [x for x in table.lines if x.component == "Event Hubs"]
    # 20,000 x 2 KiB = 39.06 MiB/s: 40 TUs by bytes, 20 by events.
    assert hubs.quantity == 40 and "over the Standard tier" not in hubs.basis
    assert hubs.dollars_per_hour == pytest.approx(
        40 * prices.eventhub_tu_hour + 20_000 * 3600 / 1e6 * prices.eventhub_million_events
    )
    # 200 executions/s, each 100 x (0.1 ms + 0.02 x 5 ms) = 20 ms, at 1.5 GB.
    gb_seconds = 200 * 0.020 * 1.5 * 3600
    [compute] = [x for x in table.lines if x.component == "Functions compute"]
    assert compute.quantity == pytest.approx(gb_seconds)
    assert compute.dollars_per_hour == pytest.approx(
        gb_seconds * prices.functions_gb_second
        + 200 * 3600 / 1e6 * prices.functions_million_executions
    )
    assert line(table, "Table storage") == pytest.approx(
        20_000 * 0.02 * 3600 / 1e4 * prices.table_ten_thousand_transactions
    )
    cosmos = plan_azure("cosmos", events_per_second=20_000, record_bytes=2048, figures=figures)
    # 2 writes x 5 RU per KB x 2 KB + 1 read x 1 RU = 21 RU per event.
    [rus] = [x for x in cosmos.lines if x.component == "Cosmos DB"]
    assert rus.quantity == 20_000 * 21
    assert rus.dollars_per_hour == pytest.approx(20_000 * 21 / 100 * prices.cosmos_hundred_rus_hour)
    big = plan_azure("table", events_per_second=MILLION, record_bytes=1024, figures=figures)
    assert "over the Standard tier's 40 per namespace" in big.lines[0].basis


def test_the_azure_command_and_its_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["plan", "azure", "--events-per-second", "20000"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    for component in ("Event Hubs", "Functions compute", "Table storage", "Cosmos DB"):
        assert component in out
    assert "classic line" not in out  # a DynamoDB line has no place in an Azure plan
    for extra, message in (
        (["--mode", "dynamodb"], "unknown --mode 'dynamodb': one of all, table, cosmos"),
        (["--prices", "classic"], "cannot read prices file classic (named sets: none)"),
    ):
        assert main([*argv, *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--capacity", "cheap"], "unknown --capacity 'cheap': one of provisioned, on-demand"),
        (["--record-bytes", "1.5"], "--record-bytes '1.5' is not a whole number"),
        (["--batch-size", "many"], "--batch-size 'many' is not a whole number"),
        (["--work-ms", "nan"], "--work-ms 'nan': give a finite number, 0 or more"),
        (["--lake-puts-per-batch", "-1"], "--lake-puts-per-batch '-1': give a finite number"),
        (["--events-per-second", "fast"], "--events-per-second 'fast' is not a number"),
    ],
)
def test_a_bad_flag_value_is_one_line_naming_the_flag(
    extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["plan", "aws", "--events-per-second", "5", *extra]) == 2
    shown = capsys.readouterr()
    assert shown.out == ""
    [line] = shown.err.strip().splitlines()
    assert message in line
