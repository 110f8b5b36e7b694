"""scripts/demo.py: pages are matched to their downloaded results by request uuid, never by folder name."""
from __future__ import annotations

import json
from pathlib import Path

from pero_worker.dev.demo import match_pages, read_manifest, results_by_uuid
from pero_worker.libs.safe_names import request_folder_name


def _downloaded(results: Path, image: str, request_uuid: str) -> Path:
    folder = results / request_folder_name(image, request_uuid)
    folder.mkdir(parents=True)
    (folder / "request_info.txt").write_text(f"uuid:             {request_uuid}\nstatus:           OK\n")
    return folder


def test_pages_with_dots_and_shared_prefixes_are_matched_by_uuid(tmp_path):
    pages = tmp_path / "pages"
    pages.mkdir()
    names = ["page.3B.tif", "page.tif", "page.3B.v2.tif", "other.png"]
    images = [pages / name for name in names]
    uuids = [f"{i:032x}" for i in range(1, 5)]
    (tmp_path / "manifest.jsonl").write_text("".join(
        json.dumps({"uuid": u, "page_uuid": "p" + u, "file": str(image)}) + "\n" for u, image in zip(uuids, images)))
    results = tmp_path / "results"
    folders = {u: _downloaded(results, image.name, u) for u, image in zip(uuids, images)}
    (results / "stray_folder").mkdir()                     # no request_info.txt: ignored

    matched = match_pages(images, read_manifest(tmp_path / "manifest.jsonl"), results_by_uuid(results))
    assert matched == {image: folders[u] for u, image in zip(uuids, images)}
    assert folders[uuids[0]].name == f"page.3B_{uuids[0][:8]}"


def test_a_page_not_downloaded_yet_is_none(tmp_path):
    image = tmp_path / "page.3B.tif"
    (tmp_path / "manifest.jsonl").write_text(json.dumps({"uuid": "a" * 32, "page_uuid": "", "file": str(image)}))
    assert match_pages([image], read_manifest(tmp_path / "manifest.jsonl"), results_by_uuid(tmp_path / "r")) == \
        {image: None}
