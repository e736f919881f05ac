"""Server names become safe, unique, stable filesystem names; URLs are built safely."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from xnatfs.errors import UsageError
from xnatfs.tree.names import assign_names, safe_name, scan_folder_name
from xnatfs.xnat.client import data_path, encode_path, normalise_base_url


def test_hostile_names_are_neutralised():
    assert safe_name("..") == "_.."
    assert safe_name(".") == "_."
    assert safe_name("a/b") == "a_b"
    assert safe_name("../../etc") == ".._.._etc"
    assert safe_name("nul\x00byte") == "nul_byte"
    assert safe_name("", fallback="12212") == "12212"


def test_long_names_fit_and_keep_their_extension():
    name = safe_name("é" * 300 + ".nii.gz")
    assert len(name.encode()) <= 255 and name.endswith(".nii.gz")
    assert safe_name("é" * 300 + ".nii.gz") == name  # stable
    assert safe_name("é" * 300 + "a.nii.gz") != name  # distinct


def test_scan_folders_follow_xnat_zip_layout():
    assert scan_folder_name("1", "T1 MPRAGE") == "1-T1_MPRAGE"
    assert scan_folder_name("13", "CBF:Feb 16 2023/x") == "13-CBF_Feb_16_2023_x"
    assert scan_folder_name("2", "") == "2"


def test_collisions_get_id_suffixes_in_a_stable_order():
    items = [("subj", "S2", "S2"), ("subj", "S1", "S1"), ("resources", "S3", "S3")]
    names = assign_names(items, reserved=["resources"])
    assert names == {"subj": "S1", "subj~S2": "S2", "resources~S3": "S3"}
    files = assign_names([("a.nii.gz", 1, "f1"), ("a.nii.gz", 2, "f2")])
    assert files == {"a.nii.gz": 1, "a~f2.nii.gz": 2}
    assert assign_names(reversed(items), reserved=["resources"]) == names


@given(st.lists(st.tuples(st.text(max_size=300), st.text(min_size=1, max_size=20)),
                max_size=20, unique_by=lambda t: t[1]))
def test_assigned_names_are_unique_safe_components(items):
    names = assign_names((raw, tie, tie) for raw, tie in items)
    assert len(names) == len(items)
    for name in names:
        assert "/" not in name and "\x00" not in name and name not in ("", ".", "..")
        assert len(name.encode()) <= 255


def test_url_building_encodes_what_xnat_needs():
    assert encode_path("/data/experiments/E/resources/1/files/a b+c (1).dcm") == \
        "/data/experiments/E/resources/1/files/a%20b%2Bc%20%281%29.dcm"
    assert encode_path("/data/x/files/résumé#1%.txt") == "/data/x/files/r%C3%A9sum%C3%A9%231%25.txt"
    assert data_path("projects", "P 1", "subjects", "a/b") == "/data/projects/P%201/subjects/a%2Fb"


def test_base_urls_are_normalised_or_refused():
    assert normalise_base_url("https://xnat.example.org/xnat/") == "https://xnat.example.org/xnat"
    assert normalise_base_url("xnat.example.org") == "https://xnat.example.org"
    for bad in ("ftp://x", "https://", "https://u:p@host", "http://host:99999"):
        try:
            normalise_base_url(bad)
        except UsageError:
            continue
        raise AssertionError(f"accepted {bad}")
