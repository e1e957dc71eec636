"""The command line's shared parts: loading MODULE:NAME and one-line errors."""

from __future__ import annotations

import pytest

from onceflow.cli import CliError, load_object, main


def test_load_object_finds_a_class() -> None:
    from examples.orders.processor import OrderProcessor

    assert load_object("examples.orders.processor:OrderProcessor") is OrderProcessor


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_colon", "is not MODULE:NAME"),
        ("nope.missing:X", "cannot import module 'nope.missing'"),
        ("examples.orders.processor:Missing", "has no 'Missing'"),
    ],
)
def test_load_object_errors_are_one_sentence(spec: str, message: str) -> None:
    with pytest.raises(CliError, match=message):
        load_object(spec)


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: onceflow" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "cause"),
    [
        (["plan", "aws", "--events-per-second", "1", "--record-bytes", "1", "--bogus"], "--bogus"),
        (["plan", "aws", "--record-bytes", "1"], "--events-per-second"),
        (["nope"], "'nope'"),
    ],
)
def test_a_usage_error_is_one_line_naming_the_cause(
    argv: list[str], cause: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    [line] = capsys.readouterr().err.splitlines()
    assert cause in line and "--help" in line
