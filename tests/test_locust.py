"""The benchmark locustfile runs headless against a real server with zero failures."""

import csv
import subprocess
import sys
from pathlib import Path

from tests.conftest import ServerProcess

LOCUSTFILE = Path(__file__).parents[1] / "benchmarks" / "locustfile.py"


def test_locust_headless_run_has_no_failures(server: ServerProcess, tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "locust",
            "-f",
            str(LOCUSTFILE),
            "--host",
            server.url,
            "--headless",
            "-u",
            "6",
            "-r",
            "6",
            "-t",
            "6s",
            "--csv",
            str(tmp_path / "run"),
            "--only-summary",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    with open(tmp_path / "run_stats.csv") as f:
        rows = {row["Name"]: row for row in csv.DictReader(f)}
    assert int(rows["/image-embeddings"]["Request Count"]) > 0
    assert int(rows["Aggregated"]["Failure Count"]) == 0
