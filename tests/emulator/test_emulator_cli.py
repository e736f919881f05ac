"""The emulator's command line (``python -m xnat_emulator``, ``xnatfs emulator``): startup line,
serving, clean exit, one-line errors with honest exit codes."""

from __future__ import annotations

import argparse
import json
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests

from xnat_emulator import Record, RequestLog
from xnat_emulator.cli import _config, build_parser, main, run


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def test_serves_until_sigterm(tmp_path: Path) -> None:
    (tmp_path / "P1/S1/MR1/scans/1-T1/resources/DICOM/files").mkdir(parents=True)
    (tmp_path / "P1/S1/MR1/scans/1-T1/resources/DICOM/files/1.dcm").write_bytes(b"x" * 10)
    process = subprocess.Popen(
        [sys.executable, "-m", "xnat_emulator", "--folder", str(tmp_path),
         "--context-path", "/xnat", "--user", "ann:pw", "--latency", "0", "--hash-first",
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
    assert run(parse(*argv), "xnatfs emulator") == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.startswith("xnatfs emulator: ")


def test_usage_error_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--no-such-option"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("xnat_emulator: ")


def test_cannot_listen_is_a_runtime_failure(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["--port", str(port)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot listen on 127.0.0.1:" in err


def test_xnatfs_emulator_hands_its_arguments_over(capsys: pytest.CaptureFixture[str]) -> None:
    from xnatfs.cli import main as xnatfs_main

    assert xnatfs_main(["-v", "emulator", "--help"]) == 0
    assert "usage: xnatfs emulator" in capsys.readouterr().out
    assert xnatfs_main(["emulator", "--latency", "soon"]) == 2
    assert capsys.readouterr().err == "xnatfs emulator: --latency wants a number, not 'soon'\n"


def test_request_log_keeps_the_most_recent_records(make_emulator: Any, login: Any) -> None:
    log = RequestLog(limit=3)
    for n in range(5):
        log.add(Record("GET", f"/{n}", "", None, 0.0))
    assert [r.path for r in log] == ["/2", "/3", "/4"]
    emulator = make_emulator(log_limit=2)
    api = login(emulator)
    for path in ("/data/projects", "/data/subjects", "/data/experiments"):
        assert api.get(path).status_code == 200
    assert [r.path for r in emulator.log] == ["/data/subjects", "/data/experiments"]
    assert _config(parse("--log-limit", "7")).log_limit == 7


def test_options_reach_the_config() -> None:
    args = parse("--guest", "--no-range", "--bandwidth", "100M", "--conn-bandwidth", "1M",
                 "--session-timeout", "60", "--error-rate", "0.25")
    config = _config(args)
    assert not config.require_login and not config.range_enabled
    assert (config.bandwidth, config.conn_bandwidth) == (100 << 20, 1 << 20)
    assert (config.session_timeout, config.error_rate) == (60.0, 0.25)


def test_the_packages_stay_apart() -> None:
    """The emulator imports nothing from xnatfs, and xnatfs commands do not load the emulator."""
    code = ("import sys, xnat_emulator, xnat_emulator.cli\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'xnatfs'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert out[0] == "[]"
    code = ("import sys\nfrom xnatfs.cli import main\nmain(['ls', '--help'])\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'xnat_emulator'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert out[-1] == "[]"
