"""The ``emulator`` subcommand: startup line, serving, clean exit, one-line errors."""

from __future__ import annotations

import argparse
import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from xnatfs.emulator.cli import _config, register, run


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="xnatfs")
    register(parser.add_subparsers(dest="command"))
    return parser.parse_args(["emulator", *argv])


def test_serves_until_sigterm(tmp_path: Path) -> None:
    (tmp_path / "P1/S1/MR1/scans/1-T1/resources/DICOM/files").mkdir(parents=True)
    (tmp_path / "P1/S1/MR1/scans/1-T1/resources/DICOM/files/1.dcm").write_bytes(b"x" * 10)
    process = subprocess.Popen(
        [sys.executable, "-m", "xnatfs.emulator.cli", "--folder", str(tmp_path),
         "--context-path", "/xnat", "--user", "ann:pw", "--latency", "0",
         "--request-log", str(tmp_path / "requests.jsonl")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.search(r"(http://127\.0\.0\.1:\d+/xnat)\s.*ann/pw", line)
        assert match, line
        url = match[1]
        projects = requests.get(url + "/data/projects", auth=("ann", "pw"), timeout=5).json()
        assert [p["ID"] for p in projects["ResultSet"]["Result"]] == ["P1"]
        assert requests.get(url + "/data/projects", timeout=5).status_code == 401
    finally:
        process.send_signal(signal.SIGTERM)
        _, errors = process.communicate(timeout=10)
    assert process.returncode == 0 and errors == ""
    logged = [json.loads(line) for line in (tmp_path / "requests.jsonl").read_text().splitlines()]
    assert [(r["path"], r["status"], r["kind"]) for r in logged] == [
        ("/data/projects", 200, "listing"), ("/data/projects", 401, "auth")]
    assert logged[0]["bytes_sent"] > 0 and logged[0]["done"] >= logged[0]["time"]


@pytest.mark.parametrize("argv", [
    ["--synthetic", "projects=lots"], ["--synthetic", "colour=blue"], ["--error-rate", "1.5"],
    ["--latency", "soon"], ["--bandwidth", "fast"], ["--user", "nopassword"],
    ["--port", "70000"], ["--folder", "/no/such/folder"],
    ["--request-log", "/no/such/folder/log"],
])
def test_bad_input_is_one_line_and_exit_2(argv: list[str],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert run(parse(*argv)) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.startswith("xnatfs emulator: ")


def test_options_reach_the_config() -> None:
    args = parse("--guest", "--no-range", "--bandwidth", "100M", "--conn-bandwidth", "1M",
                 "--session-timeout", "60", "--error-rate", "0.25")
    assert args.run is run
    config = _config(args)
    assert not config.require_login and not config.range_enabled
    assert (config.bandwidth, config.conn_bandwidth) == (100 << 20, 1 << 20)
    assert (config.session_timeout, config.error_rate) == (60.0, 0.25)
