"""materialize without a server: filters, shards, the menu's answers, output paths, part files,
progress lines."""

from __future__ import annotations

import hashlib
import io
import os
import time
from collections import Counter

import pytest

from xnatfs.errors import IntegrityError, LocalError, UsageError
from xnatfs.materialize.menu import format_menu, parse_answer
from xnatfs.materialize.output import (
    PART_SUFFIX,
    Output,
    PartFile,
    existing_size,
    part_name,
)
from xnatfs.materialize.report import Outcome, Report, Result
from xnatfs.materialize.selection import Filters, Glob, Shard, normalise_path
from xnatfs.tree.model import Context

SCAN = Context(level="scan", project="P1", subject="S001", session="S001_MR1",
               session_id="E1", xsi_type="xnat:mrSessionData", date="2023-02-01",
               inserted="2024-05-06 10:00:00.0", scan_id="1", scan_type="T1w",
               series_description="MPRAGE sag", resource="DICOM")
SESSION_RES = Context(level="session", project="P1", subject="S001", session="S001_MR1",
                      session_id="E1", xsi_type="xnat:mrSessionData", date="2023-02-01",
                      inserted="2024-05-06 10:00:00.0", resource="BIDS")
SUBJECT_RES = Context(level="subject", project="P1", subject="S001", resource="CONSENT")
PROJECT_RES = Context(level="project", project="P1", resource="PROTOCOL")
PATH = "P1/S001/S001_MR1/scans/1-T1w/resources/DICOM/files/0001.dcm"


def filters(**kw: object) -> Filters:
    return Filters.from_options(**kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(("options", "admitted"), [
    ({}, {"scan", "session", "subject", "project"}),
    ({"scan_type": ["t1*"]}, {"scan"}),
    ({"scan_type": ["*sag"]}, {"scan"}),  # series description
    ({"scan_type": ["T2*"]}, set()),
    ({"resource": ["dicom"]}, {"scan"}),
    ({"resource": ["BIDS", "CONSENT"]}, {"session", "subject"}),
    ({"subject": ["S00?"]}, {"scan", "session", "subject"}),
    ({"session": ["*_MR1"]}, {"scan", "session"}),
    ({"xsi_type": ["xnat:mrSessionData"]}, {"scan", "session"}),
    ({"xsi_type": ["MRSESSIONDATA"]}, {"scan", "session"}),
    ({"xsi_type": ["petSessionData"]}, set()),
    ({"since": "2024-05-01"}, {"scan", "session"}),  # archived after, acquired before
    ({"since": "2023-01-01"}, {"scan", "session"}),
    ({"since": "2025-01-01 00:00"}, set()),
    ({"scan_type": ["T1w"], "subject": ["S001"], "resource": ["DICOM"]}, {"scan"}),
])
def test_each_filter_admits_the_right_levels(options: dict, admitted: set[str]) -> None:
    f = filters(**options)
    contexts = {"scan": SCAN, "session": SESSION_RES, "subject": SUBJECT_RES,
                "project": PROJECT_RES}
    got = {name for name, ctx in contexts.items() if f.admits_file(PATH, ctx)}
    assert got == admitted


def test_include_and_exclude_match_tree_paths_with_star_across_slashes() -> None:
    assert filters(include=["*.dcm"]).admits_file(PATH, SCAN)
    assert filters(include=["/P1/*/DICOM/*"]).admits_file(PATH, SCAN)
    assert not filters(include=["*.nii.gz"]).admits_file(PATH, SCAN)
    assert not filters(exclude=["*/DICOM/*"]).admits_file(PATH, SCAN)
    assert not filters(include=["*.dcm"], exclude=["*0001*"]).admits_file(PATH, SCAN)
    assert not filters(include=["p1/*"]).admits_file(PATH, SCAN)  # paths are case-sensitive


def test_folders_are_pruned_only_when_no_file_below_can_pass() -> None:
    subject = Context(level="subject", project="P1", subject="S002")
    f = filters(subject=["S001"])
    assert f.rejects_folder("S002", subject)
    assert not f.rejects_folder("S001", SUBJECT_RES)
    # the project's own resources folder has no subject: nothing in it can pass --subject
    assert f.rejects_folder("resources", Context(level="project", project="P1"))
    assert not f.rejects_folder("P1", Context(level="project", project="P1"))
    scans = filters(scan_type=["T1*"])
    session = Context(level="session", session="S001_MR1", xsi_type="xnat:mrSessionData")
    assert not scans.rejects_folder("scans", session)
    assert scans.rejects_folder("resources", session)  # session resources are not scans
    assert scans.rejects_folder("QC", Context(level="assessor", session="S001_MR1"))
    assert not filters(session=["S001_*"]).rejects_folder("S001_MR1", session)
    assert filters(session=["X*"]).rejects_folder("S001_MR1", session)


@pytest.mark.parametrize(("option", "value"), [
    ("scan_type", ["[T1"]), ("subject", [""]), ("include", ["a[b"]), ("since", "yesterday"),
    ("since", "2024-13-01"),
])
def test_bad_patterns_and_dates_are_usage_errors(option: str, value: object) -> None:
    with pytest.raises(UsageError) as info:
        filters(**{option: value})
    assert "\n" not in str(info.value)


def test_glob_brackets() -> None:
    assert Glob("[[]x", "--x", fold_case=False)("[x")
    assert Glob("T[12]w", "--x", fold_case=True)("t2W")
    assert Glob("[!a]*", "--x", fold_case=False)("b")


@pytest.mark.parametrize("text", ["0/3", "4/3", "1/0", "x", "1-3", "", "-1/2"])
def test_bad_shards_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError):
        Shard.parse(text)


def test_shards_partition_paths_evenly_and_stably() -> None:
    paths = [f"P/S{i // 100}/E/scans/1-T1w/resources/DICOM/files/{i:05d}.dcm"
             for i in range(3000)]
    shards = [Shard.parse(f"{k}/3") for k in (1, 2, 3)]
    owners = [[s.takes(p) for s in shards].index(True) for p in paths]
    assert all(sum(s.takes(p) for s in shards) == 1 for p in paths)
    assert min(Counter(owners).values()) > 900  # about a third each
    assert Shard.parse(" 2 / 3 ") == shards[1]
    # the split depends only on the path: a stable hash, not Python's salted hash()
    digest = hashlib.sha256(paths[0].encode()).digest()
    assert shards[int.from_bytes(digest[:8], "big") % 3].takes(paths[0])


def test_tree_paths_are_normalised_and_dots_refused() -> None:
    assert normalise_path("/P1//S1/") == "P1/S1"
    assert normalise_path("/") == ""
    for bad in ("P1/../P2", "./P1"):
        with pytest.raises(UsageError):
            normalise_path(bad)


def test_menu_answers() -> None:
    projects = ["P1", "P2", "P3", "P4", "P5"]
    assert parse_answer("1 3 4", projects) == ["P1", "P3", "P4"]
    assert parse_answer("4,1", projects) == ["P1", "P4"]
    assert parse_answer("2-4", projects) == ["P2", "P3", "P4"]
    assert parse_answer("P5 1", projects) == ["P1", "P5"]
    assert parse_answer("all", projects) == projects
    for bad in ("", "0", "6", "P", "1 x"):
        with pytest.raises(UsageError):
            parse_answer(bad, projects)
    menu = format_menu([*projects, "LONGPROJECT"], 80)
    assert menu.splitlines()[0].startswith("1) P1")
    assert "6) LONGPROJECT" in menu.splitlines()[1]  # five per line, like the Downloader


def test_output_refuses_names_that_could_escape(tmp_path) -> None:
    out = Output(str(tmp_path / "out"))
    out.target("x")  # checked folders are remembered: "" (none) must not stand for "/"
    out.target("P/x")
    for bad in ("P/../x", "P/./x", "/x", "P//x", "P/a\0b", "P/" + "x" * 256, "/P/x", "P/x/"):
        with pytest.raises(LocalError):
            out.target(bad)
    target = out.target("P/S/file.dcm")
    assert target.final == os.path.join(out.root, "P", "S", "file.dcm")
    assert os.path.basename(target.part) == ".file.dcm" + PART_SUFFIX


def test_output_does_not_follow_symbolic_links(tmp_path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = Output(str(tmp_path / "out"))
    out.create()
    os.symlink(elsewhere, tmp_path / "out" / "P")
    with pytest.raises(LocalError, match="symbolic link"):
        out.make_parents(out.target("P/S/file.dcm"))
    assert list(elsewhere.iterdir()) == []


def test_a_missing_folder_is_remembered_until_the_run_makes_it(tmp_path) -> None:
    out = Output(str(tmp_path / "out"))
    out.create()
    assert out.target("P/S/a.dcm").absent and out.target("P/S/b.dcm").absent
    assert out.target("P/T/c.dcm").absent
    out.make_parents(out.target("P/S/a.dcm"))
    (tmp_path / "out" / "P" / "S" / "b.dcm").write_bytes(b"x")
    assert not out.target("P/S/b.dcm").absent  # made since: looked at again
    assert not out.target("P/x.dcm").absent
    assert out.target("P/T/c.dcm").absent  # P exists now, T still does not
    os.symlink(tmp_path, tmp_path / "out" / "P" / "T")  # appears where nothing was
    with pytest.raises(LocalError, match="symbolic link"):
        out.make_parents(out.target("P/T/c.dcm"))


def test_long_names_get_a_hashed_part_name() -> None:
    name = "é" * 126 + ".dcm"  # 256 bytes with the dot
    assert len(part_name(name).encode()) <= 255
    assert part_name(name).endswith(PART_SUFFIX)
    assert part_name(name) != part_name(name[1:])


def test_unusable_output_folder_is_one_usage_line(tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UsageError) as info:
        Output(str(blocker / "out")).create()
    assert "\n" not in str(info.value)
    with pytest.raises(UsageError):
        Output(str(blocker)).create()


def test_the_output_folder_is_made_only_when_asked(tmp_path) -> None:
    out = Output(str(tmp_path / "out"))
    assert not out.exists() and not (tmp_path / "out").exists()
    assert out.create() and out.exists() and not out.create()


def test_output_refuses_the_names_of_its_own_records(tmp_path) -> None:
    out = Output(str(tmp_path / "out"))
    for reserved in (".xnatfs/manifest.jsonl", "MD5SUMS"):
        with pytest.raises(LocalError, match="records"):
            out.target(reserved)
    assert out.target("P/MD5SUMS").final.endswith("P/MD5SUMS")


def _part(tmp_path, data: bytes, *, align: int = 4, resume: bool = True) -> PartFile:
    out = Output(str(tmp_path / "out"))
    out.create()
    target = out.target("P/f.bin")
    out.make_parents(target)
    return PartFile(target, len(data), hashlib.md5(data).hexdigest(), align=align, resume=resume)


def test_part_file_commits_only_verified_bytes(tmp_path) -> None:
    data = bytes(range(10))
    part = _part(tmp_path, data)
    part.write(data[:6])
    part.close()
    final = tmp_path / "out" / "P" / "f.bin"
    assert not final.exists()
    # a rerun continues from the last whole block, hashing what is already there
    part = _part(tmp_path, data)
    assert part.offset == 4 and part.resumed_from == 4
    part.write(data[4:])
    part.commit(1_000_000_000.0)
    assert final.read_bytes() == data
    assert os.stat(final).st_mtime == 1_000_000_000.0
    assert not os.path.exists(part.target.part)
    assert existing_size(str(final)) == 10


def test_part_file_with_wrong_bytes_is_removed_not_committed(tmp_path) -> None:
    data = bytes(range(10))
    part = _part(tmp_path, data)
    part.write(b"x" * 10)
    with pytest.raises(IntegrityError, match="MD5 mismatch"):
        part.commit(0.0)
    assert not (tmp_path / "out" / "P" / "f.bin").exists()
    assert not os.path.exists(part.target.part)


def test_part_file_longer_than_the_file_starts_over(tmp_path) -> None:
    data = bytes(range(10))
    part = _part(tmp_path, data)
    part.write(b"y" * 16)
    part.close()
    assert _part(tmp_path, data).offset == 0
    assert _part(tmp_path, data, resume=False).offset == 0


def test_existing_size_refuses_what_is_not_a_regular_file(tmp_path) -> None:
    assert existing_size(str(tmp_path / "none")) is None
    os.symlink("/etc/passwd", tmp_path / "link")
    with pytest.raises(LocalError):
        existing_size(str(tmp_path / "link"))
    with pytest.raises(LocalError):
        existing_size(str(tmp_path))


def test_progress_lines_when_not_on_a_terminal_speak_the_summary_units() -> None:
    lines: list[str] = []

    class Stream:
        def write(self, text: str) -> None:
            lines.append(text)

        def flush(self) -> None: ...

        def isatty(self) -> bool:
            return False

    report = Report("/out", stream=Stream(), interval=0.02)  # type: ignore[arg-type]
    report.planned(10 << 20)
    report.planned(10 << 20)
    report.wrote(5 << 20)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any("materialize:" in s for s in lines):
        time.sleep(0.01)
    report.close()
    line = next(s for s in lines if "materialize:" in s)
    assert "0/2 files, 5.0 MiB of 20.0 MiB, " in line and "MiB/s" in line and "ETA" in line


def test_the_bar_at_a_terminal_makes_its_text_as_often_as_it_draws(monkeypatch) -> None:
    stream = io.StringIO()
    report = Report("/out", progress=True, stream=stream)
    made = Counter()
    text = Report._progress_text

    def counted(self: Report) -> str:
        made["text"] += 1
        return text(self)

    monkeypatch.setattr(Report, "_progress_text", counted)
    for _ in range(2000):
        report.planned(10)
    for k in range(2000):  # a failure and a success replacing one, for every file
        report.wrote(10)
        report.finished(Result(f"f{k}", Outcome.FAILED, 10, reason="x"))
        report.finished(Result(f"f{k}", Outcome.DOWNLOADED, 10) if k % 2 else
                        Result(f"f{k}", Outcome.FAILED, 10, reason="x"))
    report.close()
    assert made["text"] < 100  # 10,000 events; it was once per event, each O(files)
    last = stream.getvalue().rsplit("\r", 1)[-1]
    assert "2000/2000 files" in last and "1000 failed" in last
