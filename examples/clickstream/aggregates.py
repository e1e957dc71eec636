"""Per-user aggregates over the clicks a local run stored, each click counted exactly once.

python -m examples.clickstream.aggregates --state .clicks
"""

from __future__ import annotations

import argparse
import sqlite3
from dataclasses import dataclass
from pathlib import Path

__all__ = ["UserStats", "per_user"]


@dataclass(frozen=True, slots=True)
class UserStats:
    """What one user did."""

    user_id: str
    clicks: int
    total_ms: int
    pages: int
    first: str
    last: str


def per_user(state: str | Path) -> list[UserStats]:
    """Clicks, time on page, distinct pages and first/last click per user, by user id."""
    path = Path(state) / "state.db"
    with sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True) as conn:
        rows = conn.execute(
            """
            SELECT json_extract(value, '$.user_id') AS user_id,
                   count(*),
                   sum(json_extract(value, '$.duration_ms')),
                   count(DISTINCT json_extract(value, '$.page')),
                   min(json_extract(value, '$.ts')),
                   max(json_extract(value, '$.ts'))
            FROM outputs GROUP BY user_id ORDER BY user_id
            """
        ).fetchall()
    return [UserStats(*row) for row in rows]


def main() -> None:
    """Print the aggregates of a state folder."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--state", default=".onceflow")
    args = parser.parse_args()
    print(f"{'user':<8}{'clicks':>7}{'total ms':>10}{'pages':>7}  first .. last")
    for s in per_user(args.state):
        print(f"{s.user_id:<8}{s.clicks:>7}{s.total_ms:>10}{s.pages:>7}  {s.first} .. {s.last}")


if __name__ == "__main__":
    main()
