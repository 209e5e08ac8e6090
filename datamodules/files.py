"""Reading the row files datamodules share (JSON Lines, CSV), with errors that name the file and line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from datamodules.errors import DataLayoutError


def read_csv_rows(path: Path, help_text: str) -> list[dict]:
    """Rows of a CSV file with a header, as dicts; a missing file raises `DataLayoutError` with ``help_text``."""
    if not path.is_file():
        raise DataLayoutError(f"missing file {path}. {help_text}")
    with path.open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def read_jsonl(path: Path, help_text: str) -> list[dict]:
    """Objects of a JSON Lines file (blank lines skipped); a missing file or bad line names itself."""
    if not path.is_file():
        raise DataLayoutError(f"missing file {path}. {help_text}")
    rows = []
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataLayoutError(f"{path}:{n} is not valid JSON ({exc.msg}). {help_text}") from exc
    return rows
