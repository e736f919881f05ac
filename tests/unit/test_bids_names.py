"""BIDS naming without a server: ReproIn, bidsmaps, labels and run numbers."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xnatfs.bids.names import (
    Bidsmap,
    BidsName,
    Namer,
    assign_runs,
    parse_bidsname,
    reproin,
    safe_label,
    session_label,
    unique_labels,
)
from xnatfs.errors import UsageError


@pytest.mark.parametrize(("description", "expected"), [
    ("anat-T1w", "anat/T1w"),
    ("anat-T1w_acq-MPRAGE", "anat/acq-MPRAGE_T1w"),
    ("func-bold_task-rest_run-01", "func/task-rest_run-01_bold"),
    ("func_task-nback", "func/task-nback_bold"),
    ("fmap-epi_dir-AP", "fmap/dir-AP_epi"),
    ("dwi_dir-PA", "dwi/dir-PA_dwi"),
    ("anat-T2w__my custom note", "anat/T2w"),
    ("func-bold_ses-pre_task-rest", "func/task-rest_bold"),  # XNAT names the session
    ("func-bold_run-02_task-rest", "func/task-rest_run-02_bold"),  # entity order is BIDS'
])
def test_reproin_series_descriptions_become_bids_names(description: str, expected: str) -> None:
    name = reproin(description)
    assert name is not None
    assert f"{name.datatype}/{name}" == expected


@pytest.mark.parametrize("description", [
    "localizer", "AAHScout", "MPRAGE", "t1_mprage_sag", "anat", "anat-T1w_bad entity",
    "func-T1w", "anat-nonsense", "",
])
def test_other_descriptions_are_no_reproin_name(description: str) -> None:
    assert reproin(description) is None


def test_a_bidsname_is_parsed_in_any_entity_order_and_loses_sub_and_ses() -> None:
    name = parse_bidsname("sub-01_ses-A_run-2_task-rest_bold")
    assert name == BidsName("func", "bold", (("task", "rest"), ("run", "2")))
    assert name.stem("B001", "MR1") == "sub-B001_ses-MR1_task-rest_run-2_bold"
    with pytest.raises(ValueError, match="suffix"):
        parse_bidsname("task-rest_nonsense")
    with pytest.raises(ValueError, match="entity"):
        parse_bidsname("rest_bold")


def test_labels_are_letters_and_digits_and_lose_the_subject_prefix() -> None:
    assert safe_label("P-001 (pilot)") == "P001pilot"
    assert session_label("P001_MR1", "P001") == "MR1"
    assert session_label("P001MR1", "P001") == "P001MR1"  # no separator: not a prefix
    assert session_label("P001", "P001") == "P001"
    assert session_label("visit_1", "P001") == "visit1"
    assert unique_labels([("a", "A-1"), ("b", "A_1"), ("c", "a1")]) == \
        {"a": "A1", "b": "A12", "c": "a13"}


def test_both_bidsmap_forms_are_read_and_exact_entries_win() -> None:
    bidsmap = Bidsmap.parse(
        '[{"pattern": "^ep2d_bold_(rest|motor)", "bidsname": "task-motor_bold"},'
        ' {"series_description": "MPRAGE", "bidsname": "T1w"},'
        ' {"xnat_field": "ep2d_bold_rest", "bidsname": "task-rest_bold"},'
        ' {"pattern": "scout", "bidsname": ""}]', "map.json")
    namer = Namer([bidsmap])
    assert str(namer.name("mprage").name) == "T1w"
    assert str(namer.name("ep2d_bold_rest").name) == "task-rest_bold"
    assert str(namer.name("ep2d_bold_motor").name) == "task-motor_bold"
    excluded = namer.name("AAHscout")
    assert excluded.name is None and "excluded" in excluded.source
    assert str(namer.name("anat-T2w").name) == "T2w"  # ReproIn after the maps
    assert namer.name("localizer").name is None


def test_the_first_map_that_names_a_series_wins() -> None:
    given_map = Bidsmap.parse('[{"series_description": "MPRAGE", "bidsname": "acq-x_T1w"}]',
                              "--bidsmap")
    project = Bidsmap.parse('[{"series_description": "MPRAGE", "bidsname": "T1w"},'
                            ' {"series_description": "T2", "bidsname": "T2w"}]', "project")
    namer = Namer([given_map, project])
    assert (str(namer.name("MPRAGE").name), namer.name("MPRAGE").source) == \
        ("acq-x_T1w", "--bidsmap")
    assert namer.name("T2").source == "project"


@pytest.mark.parametrize(("text", "says"), [
    ("{not json", "is not JSON"),
    ('{"a": 1}', "must be a JSON list"),
    ('[["MPRAGE", "T1w"]]', "entry 1 is not an object"),
    ('[{"bidsname": "T1w"}]', "exactly one of"),
    ('[{"series_description": "x"}]', "has no bidsname"),
    ('[{"series_description": "x", "bidsname": "T1w_bad"}]', "bad bidsname"),
    ('[{"pattern": "(", "bidsname": "T1w"}]', "bad pattern"),
    ('[{"series_description": 3, "bidsname": "T1w"}]', "must be a string"),
])
def test_a_bad_bidsmap_is_one_line_naming_the_entry(text: str, says: str) -> None:
    with pytest.raises(UsageError, match=says) as caught:
        Bidsmap.parse(text, "map.json")
    assert "\n" not in str(caught.value) and str(caught.value).startswith("map.json")


def test_colliding_names_get_runs_in_scan_order() -> None:
    t1 = parse_bidsname("T1w")
    bold = parse_bidsname("task-rest_bold")
    out = assign_runs([t1, bold, t1, parse_bidsname("run-01_T1w")])
    assert [str(n) for n in out] == ["run-02_T1w", "task-rest_bold", "run-03_T1w",
                                     "run-01_T1w"]


_names = st.builds(
    lambda suffix, task, run: parse_bidsname(
        "_".join(filter(None, [f"task-{task}" if task else "", f"run-{run:02d}" if run else "",
                               suffix]))),
    st.sampled_from(["T1w", "bold", "dwi"]), st.sampled_from(["", "rest", "motor"]),
    st.integers(0, 3))


@given(st.lists(_names, max_size=12))
def test_assigned_names_are_distinct_and_unique_ones_are_kept(names: list[BidsName]) -> None:
    out = assign_runs(names)
    assert len(set(out)) == len(out)
    for before, after in zip(names, out, strict=True):
        if names.count(before) == 1:
            assert after == before
        else:
            assert after.with_entity("run", "x") == before.with_entity("run", "x")
