"""Listings: envelopes, column sets, string types and XNAT's identifier rules."""

from __future__ import annotations

from typing import Any

import pytest

from xnat_emulator import Archive, Emulator

RESOURCE_KEYS = {"xnat_abstractresource_id", "label", "element_name", "category", "cat_id",
                 "cat_desc", "file_count", "file_size", "tags", "content", "format"}
FILE_KEYS = {"Name", "Size", "URI", "collection", "file_tags", "file_format", "file_content",
             "cat_ID", "digest"}


def result_set(response: Any) -> dict[str, Any]:
    assert response.status_code == 200, response.text[:200]
    assert response.headers["Content-Type"] == "application/json"
    assert "Content-Length" not in response.headers  # streamed, like Restlet
    document = response.json()
    rows = document["ResultSet"]["Result"]
    for row in rows:
        assert all(isinstance(v, str) for v in row.values()), row
    return document["ResultSet"]


def rows(response: Any) -> list[dict[str, str]]:
    return result_set(response)["Result"]


@pytest.fixture
def api(emulator: Emulator, login: Any) -> Any:
    return login(emulator)


def test_projects_listing(api: Any, small_archive: Archive) -> None:
    listing = result_set(api.get("/data/projects", params={"format": "json"}))
    assert listing["totalRecords"] == str(len(listing["Result"])) == "2"
    assert "title" not in listing
    row = listing["Result"][0]
    assert set(row) == {"ID", "secondary_ID", "name", "description", "pi_firstname",
                        "pi_lastname", "URI"}
    assert row["URI"] == f"/data/projects/{row['ID']}"


def test_subjects_and_experiments(api: Any) -> None:
    subjects = rows(api.get("/data/projects/PROJ01/subjects?format=json"))
    assert {s["label"] for s in subjects} == {"S001", "S002"}
    subject = subjects[0]
    assert set(subject) == {"ID", "project", "label", "insert_date", "insert_user", "URI"}
    assert subject["URI"] == f"/data/subjects/{subject['ID']}"
    assert subject["insert_date"].count(".") == 1
    experiments = rows(api.get(f"/data/projects/PROJ01/subjects/{subject['ID']}/experiments"))
    assert len(experiments) == 2
    for e in experiments:
        assert e["xnat:subjectassessordata/id"] == e["ID"]
        assert set(e) >= {"ID", "project", "date", "xsiType", "label", "insert_date", "URI"}
        assert e["xsiType"] == "xnat:mrSessionData"


def test_project_experiments_columns(api: Any) -> None:
    columns = "ID,label,subject_ID,subject_label,last_modified,bogus"
    listing = rows(api.get("/data/projects/PROJ01/experiments", params={"columns": columns}))
    assert len(listing) == 4
    assert set(listing[0]) == {"ID", "label", "subject_ID", "subject_label", "last_modified",
                               "URI", "xnat:subjectassessordata/id"}


def test_all_experiments_filters_by_primary_project(api: Any, small_archive: Archive) -> None:
    listing = result_set(api.get("/data/experiments", params={
        "project": "PROJ02", "columns": "ID,label,project,subject_ID,subject_label"}))
    assert listing["title"] == "Matching experiments"
    sessions = [r for r in listing["Result"] if not r["label"].endswith(("_QC1",))]
    assert len(sessions) == 4 and all(r["project"] == "PROJ02" for r in listing["Result"])
    assessors = [r for r in listing["Result"] if r["label"].endswith("_QC1")]
    assert len(assessors) == 4 and all(r["subject_ID"] == "" for r in assessors)
    typed = rows(api.get("/data/experiments?xsiType=xnat:mrSessionData&project=PROJ01"))
    assert {"subject_ID", "subject_label"} <= set(typed[0])


def test_paging_sorting_and_wildcards(api: Any) -> None:
    paged = result_set(api.get("/data/experiments", params={"limit": "3", "offset": "1",
                                                            "sortBy": "label,ID"}))
    assert "totalRecords" not in paged and len(paged["Result"]) == 3
    everything = rows(api.get("/data/experiments", params={"sortBy": "label,ID"}))
    assert [r["ID"] for r in paged["Result"]] == [r["ID"] for r in everything[1:4]]
    descending = rows(api.get("/data/experiments?sortBy=label,ID&sortOrder=DESC"))
    assert descending == everything[::-1]
    wild = rows(api.get("/data/experiments?label=S001_MR*&project=PROJ01"))
    assert {r["label"] for r in wild} == {"S001_MR1", "S001_MR2", "S001_MR1_QC1", "S001_MR2_QC1"}
    either = rows(api.get("/data/experiments?label=S001_MR1,S002_MR2&project=PROJ01"))
    assert {r["label"] for r in either} == {"S001_MR1", "S002_MR2"}


def test_scans_resources_and_files(api: Any, small_archive: Archive) -> None:
    session = small_archive.experiments["XNAT_E00001"]
    scans = rows(api.get(f"/data/experiments/{session.id}/scans?format=json"))
    assert [s["ID"] for s in scans] == ["1", "2"]
    assert set(scans[0]) == {"xnat_imagescandata_id", "ID", "type", "quality", "xsiType",
                             "note", "series_description", "URI"}
    assert scans[0]["URI"] == f"/data/experiments/{session.id}/scans/1"
    resources = result_set(api.get(f"/data/experiments/{session.id}/scans/1/resources",
                                   params={"columns": "ID,URI,label,xsiType"}))
    assert resources["title"] == "Resources"
    assert resources["totalRecords"] == "2"
    dicom = resources["Result"][0]
    assert set(dicom) == RESOURCE_KEYS  # no URI, no ID, whatever columns= says
    assert (dicom["label"], dicom["category"], dicom["cat_id"], dicom["cat_desc"]) == \
           ("DICOM", "scans", "1", "T1w")
    assert dicom["file_count"] == "3" and dicom["file_size"] == str(3 * 2048)
    files = result_set(api.get(f"/data/experiments/{session.id}/scans/1/resources/DICOM/files"))
    assert "totalRecords" not in files and files["title"] == "Files"
    assert files["Columns"] == [{"key": "URI", "serverRoot": ""}]
    row = files["Result"][0]
    assert set(row) == FILE_KEYS
    rid = dicom["xnat_abstractresource_id"]
    assert row["URI"] == f"/data/experiments/{session.id}/scans/1/resources/{rid}/files/0001.dcm"
    oracle = small_archive.resources[int(rid)].files[0]
    assert (row["Size"], row["digest"], row["cat_ID"]) == (str(oracle.size), oracle.md5, rid)


def test_session_level_listings(api: Any, small_archive: Archive) -> None:
    session = small_archive.experiments["XNAT_E00001"]
    resources = rows(api.get(f"/data/experiments/{session.id}/resources"))
    assert [(r["label"], r["category"], r["cat_id"], r["cat_desc"]) for r in resources] == \
           [("BIDS", "resources", session.id, " ")]
    own = rows(api.get(f"/data/experiments/{session.id}/files"))
    assert all("/scans/" not in r["URI"] for r in own) and len(own) == 2
    everything = rows(api.get(f"/data/experiments/{session.id}/files?all=true"))
    expected = {f.uri for f in small_archive.files() if f.resource.owner.session is session}
    assert {r["URI"] for r in everything} == expected
    assert any("/assessors/" in u and "/out/resources/" in u for u in expected)
    assert any("/reconstructions/" in u for u in expected)
    assessors = rows(api.get(f"/data/experiments/{session.id}/assessors"))
    assert assessors[0]["session_ID"] == session.id
    assert assessors[0]["URI"] == f"/data/experiments/{assessors[0]['ID']}"
    recons = rows(api.get(f"/data/experiments/{session.id}/reconstructions"))
    assert set(recons[0]) == {"xnat_reconstructedimagedata_id", "ID", "type", "baseScanType",
                              "URI"}
    assessor_files = rows(api.get(
        f"/data/experiments/{session.id}/assessors/{assessors[0]['ID']}/out/resources/QC/files"))
    assert all("/out/resources/" in r["URI"] for r in assessor_files)


def test_project_and_subject_files(api: Any, small_archive: Archive) -> None:
    project_files = rows(api.get("/data/projects/PROJ01/files"))
    assert {r["URI"] for r in project_files} == {
        f.uri for f in small_archive.files() if f.level == "project" and f.project_id == "PROJ01"}
    subject = small_archive.projects["PROJ01"].subjects[0]
    by_label = rows(api.get(f"/data/projects/PROJ01/subjects/{subject.label}/files"))
    assert {r["URI"] for r in by_label} == {f.uri for r in subject.resources for f in r.files}
    resources = rows(api.get("/data/projects/PROJ01/resources"))
    assert resources[0]["cat_id"] == "" and resources[0]["cat_desc"] == " "


def test_long_forms_and_aliases(api: Any, small_archive: Archive) -> None:
    session = small_archive.experiments["XNAT_E00001"]
    subject = session.parent
    long = f"/projects/PROJ01/subjects/{subject.label}/experiments/{session.label}/scans"
    reference = rows(api.get(f"/data/experiments/{session.id}/scans"))
    for prefix in ("/data", "/data/archive", "/REST", "/REST/archive"):
        assert rows(api.get(prefix + long)) == reference
    files = rows(api.get(f"/data{long}/1/resources/DICOM/files"))
    # one catalogue reached through project+subject: URIs keep that prefix (getBaseURI)
    assert files[0]["URI"].startswith(
        f"/data/projects/PROJ01/subjects/{subject.id}/experiments/{session.id}/scans/1/resources/")
    assert api.get(files[0]["URI"]).status_code == 200


def test_items_form(api: Any, small_archive: Archive) -> None:
    session = small_archive.experiments["XNAT_E00001"]
    item = api.get(f"/data/experiments/{session.id}?format=json").json()["items"][0]
    assert item["meta"]["xsi:type"] == "xnat:mrSessionData" and not item["meta"]["isHistory"]
    assert item["data_fields"]["subject_ID"] == session.parent.id
    assert api.get(f"/data/experiments/{session.id}").headers["Content-Type"].startswith(
        "text/html")
    subject = api.get(f"/data/projects/PROJ01/subjects/{session.parent.id}?format=json").json()
    assert subject["items"][0]["data_fields"]["label"] == session.parent.label


def test_labels_are_not_percent_decoded(hostile_emulator: Emulator, login: Any,
                                        hostile_archive: Archive) -> None:
    api = login(hostile_emulator)
    assert api.get("/data/projects/HOSTILE/subjects/plus+sign").status_code == 200
    assert api.get("/data/projects/HOSTILE/subjects/plus%2Bsign").status_code == 404
    assert api.get("/data/projects/HOSTILE/subjects/Subj%20With%20Space").status_code == 404
    assert api.get("/data/projects/HOSTILE/subjects/A&B").status_code == 404  # XML-escaped
    for label in ("A&B", "Subj With Space"):
        subject = next(s for s in hostile_archive.subjects.values() if s.label == label)
        assert api.get(f"/data/projects/HOSTILE/subjects/{subject.id}").status_code == 200


def test_scan_segments_are_decoded_and_match_types(hostile_emulator: Emulator, login: Any,
                                                   hostile_archive: Archive) -> None:
    api = login(hostile_emulator)
    session = next(e for e in hostile_archive.experiments.values() if e.label == "Sess (1) %#")
    base = f"/data/experiments/{session.id}/scans"
    by_type = rows(api.get(f"{base}/T1+MPRAGE/resources"))  # "+" decodes to a space
    assert {r["cat_id"] for r in by_type} == {"1"}
    both = rows(api.get(f"{base}/1/resources"))  # scan ID 1, and scan 2 whose type is "1"
    assert {r["cat_id"] for r in both} == {"1", "2"}
    slashed = rows(api.get(f"{base}/a[SLASH]b/resources"))
    assert {r["cat_id"] for r in slashed} == {"3"}
    assert len(rows(api.get(f"{base}/ALL/resources"))) == 6
    assert api.get(f"{base}/nope/resources").status_code == 404


def test_resource_by_label_id_and_duplicates(hostile_emulator: Emulator, login: Any,
                                             hostile_archive: Archive) -> None:
    api = login(hostile_emulator)
    session = next(e for e in hostile_archive.experiments.values() if e.label == "Sess (1) %#")
    scan = session.scans[0]
    dicoms = [r for r in scan.resources if r.label == "DICOM"]
    assert len(dicoms) == 2
    base = f"/data/experiments/{session.id}/scans/T1%20MPRAGE/resources"
    merged = rows(api.get(f"{base}/DICOM/files"))
    assert {r["cat_ID"] for r in merged} == {str(r.id) for r in dicoms}
    unlabelled = next(r for r in scan.resources if r.label == "")
    listed = rows(api.get(f"{base}/{unlabelled.id}/files"))
    assert [r["collection"] for r in listed] == [""]
    assert rows(api.get(f"{base}/NOSUCH/files")) == []  # 200 with an empty list


def test_shared_subject_uses_label_in_project(hostile_emulator: Emulator, login: Any,
                                              hostile_archive: Archive) -> None:
    api = login(hostile_emulator)
    subjects = rows(api.get("/data/projects/SHARED/subjects"))
    assert [(s["label"], s["project"]) for s in subjects] == [("Shared Subj", "HOSTILE")]
    experiments = rows(api.get("/data/projects/SHARED/experiments?columns=ID,label,project,"
                               "subject_label"))
    assert {e["project"] for e in experiments} == {"SHARED"}
    assert {e["subject_label"] for e in experiments} == {"Shared Subj"}
    subject = next(s for s in hostile_archive.subjects.values() if s.label == "Subj With Space")
    listed = rows(api.get(f"/data/projects/SHARED/subjects/{subject.id}/experiments"))
    assert {e["label"] for e in listed} == {"Shared Sess 1", "Shared Sess 2"}
    assert api.get("/data/projects/SHARED/subjects/Shared%20Subj").status_code == 404
    primary = rows(api.get("/data/experiments?project=SHARED"))
    assert primary == []  # shared experiments are not in the primary-project filter


def test_non_imaging_scans_are_500(hostile_emulator: Emulator, login: Any,
                                   hostile_archive: Archive) -> None:
    api = login(hostile_emulator)
    variables = next(e for e in hostile_archive.experiments.values() if e.label == "VARS")
    assert api.get(f"/data/experiments/{variables.id}/scans").status_code == 500
    subject = variables.parent
    assert api.get(f"/data/projects/HOSTILE/subjects/{subject.id}/experiments/VARS/scans"
                   ).status_code == 500
    assert api.get("/data/experiments/NOPE/scans").status_code == 500
    assert api.get(f"/data/projects/HOSTILE/subjects/{subject.id}/experiments/NOPE/scans"
                   ).status_code == 404


def test_unknown_routes_are_restlet_404(api: Any) -> None:
    for path in ("/data/version", "/data/nothing", "/data/projects/PROJ01/bogus", "/else"):
        response = api.get(path)
        assert response.status_code == 404
        assert "<h3>" in response.text and "Status page" in response.text


def test_context_path(make_emulator: Any, login: Any, small_archive: Archive) -> None:
    emulator = make_emulator(context_path="/xnat/")
    assert emulator.url.endswith("/xnat")
    api = login(emulator)
    files = result_set(api.get("/data/experiments/XNAT_E00001/scans/1/resources/DICOM/files"))
    assert files["Columns"] == [{"key": "URI", "serverRoot": "/xnat"}]
    uri = files["Result"][0]["URI"]
    assert uri.startswith("/data/")  # never the context path
    assert api.get(uri).status_code == 200
    assert api.get(emulator.url.removesuffix("/xnat") + "/data/projects").status_code == 404
    assert emulator.log.records()[-2].path == uri  # logged without the context path
