"""Envelope parsing with rows shaped like a real XNAT's (docs/xnat-api.md §3)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xnatfs.errors import ServerError
from xnatfs.xnat.rows import Experiment, FileRow, Resource, Scan, result_rows

EXPERIMENTS = json.loads("""{"ResultSet":{"Result":[
  {"date":"2023-02-19","xsiType":"xnat:mrSessionData","xnat:subjectassessordata/id":"CIRXNAT2_E18718","insert_date":"2023-09-27 17:31:21.352","project":"Sandbox","ID":"CIRXNAT2_E18718","label":"exam0004","URI":"/data/experiments/CIRXNAT2_E18718"},
  {"date":"","xsiType":"xnat:petSessionData","xnat:subjectassessordata/id":"CIRXNAT2_E18800","insert_date":"2023-10-02 09:01:44.0","project":"Sandbox","ID":"CIRXNAT2_E18800","label":"exam0005_PET","URI":"/data/experiments/CIRXNAT2_E18800"},
  {"date":"","xsiType":"xnat:subjectVisitData","ID":"E3","label":"visit","URI":"/data/experiments/E3"}
],"totalRecords":"3"}}""")

FILES = json.loads("""{"ResultSet":{"Columns":[{"key":"URI","serverRoot":""}],"Result":[
  {"file_content":"RAW","Size":"285202","file_tags":"","cat_ID":"12212","digest":"5D41402ABC4B2A76B9719D911017C592","collection":"DICOM","URI":"/data/experiments/XNAT_E00152/scans/7/resources/12212/files/1.3.12.2-7-103-a7opal.dcm","file_format":"DICOM","Name":"1.3.12.2-7-103-a7opal.dcm"},
  {"file_content":"","Size":"","file_tags":"","cat_ID":"12250","digest":"","collection":"BIDS","URI":"/data/experiments/XNAT_E00152/resources/12250/files/anat/sub-005 T1w+x.nii.gz","file_format":"","Name":"sub-005 T1w+x.nii.gz"},
  {"file_content":"","Size":"10","cat_ID":"9","digest":"","collection":"QC","URI":"/data/experiments/E/assessors/A/out/resources/9/files/x/resources/1/files/y.txt","Name":"y.txt"}
],"title":"Files"}}""")


def test_experiment_rows_keep_strings_and_know_image_sessions():
    rows = [Experiment.from_row(r) for r in result_rows(EXPERIMENTS, "experiments")]
    assert [e.id for e in rows] == ["CIRXNAT2_E18718", "CIRXNAT2_E18800", "E3"]
    assert rows[0].date == "2023-02-19" and rows[1].date == ""
    assert [e.is_image_session for e in rows] == [True, True, False]


def test_file_rows_take_path_and_resource_from_the_uri():
    dicom, nifti, nested = (FileRow.from_row(r) for r in result_rows(FILES, "files"))
    assert dicom.resource_id == "12212" and dicom.relpath == "1.3.12.2-7-103-a7opal.dcm"
    assert dicom.owner == "/data/experiments/XNAT_E00152/scans/7"
    assert dicom.size == 285202 and dicom.digest == "5d41402abc4b2a76b9719d911017c592"
    assert nifti.relpath == "anat/sub-005 T1w+x.nii.gz" and nifti.resource_label == "BIDS"
    assert nifti.size is None and nifti.digest is None
    # the leftmost /resources/{id}/files/ ends the owner; deeper look-alikes stay in the path
    assert nested.owner == "/data/experiments/E/assessors/A/out"
    assert nested.relpath == "x/resources/1/files/y.txt"


def test_resource_rows_with_empty_stats():
    row = {"file_count": "", "xnat_abstractresource_id": "4511", "cat_desc": " ", "cat_id": "",
           "format": "", "label": "", "category": "resources", "file_size": "10240"}
    res = Resource.from_row(row)
    assert (res.id, res.label, res.file_count, res.file_size) == ("4511", "", None, 10240)


def test_nulls_and_numbers_become_strings():
    doc = {"ResultSet": {"Result": [{"ID": 7, "type": None, "note": True}]}}
    (row,) = result_rows(doc, "scans")
    assert row == {"ID": "7", "type": "", "note": "true"}
    assert Scan.from_row(row).id == "7"


@pytest.mark.parametrize("doc", [None, [], {"ResultSet": {}}, {"ResultSet": {"Result": {}}},
                                 {"ResultSet": {"Result": [1]}}, "<html>"])
def test_malformed_envelopes_are_server_errors(doc):
    with pytest.raises(ServerError, match="malformed listing"):
        result_rows(doc, "/data/projects")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=10,
)


@given(json_values)
def test_any_json_gives_rows_or_one_server_error(doc):
    try:
        rows = result_rows(doc, "x")
    except ServerError as exc:
        assert "\n" not in str(exc)
        return
    for row in rows:
        assert all(isinstance(v, str) for v in row.values())
        FileRow.from_row(row)
        Experiment.from_row(row)
