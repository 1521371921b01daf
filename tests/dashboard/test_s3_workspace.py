"""The Dataset page on a workspace whose dataset versions live on S3 (the local moto server):
the removed rows' text is read back from the parent version on the store."""

from __future__ import annotations

from importlib import resources

from catalog import versions
from catalog.db import Catalog
from catalog.workspace import Workspace
from kalmix.ingest import ingest
from kalmix.pipeline import apply
from tests.dashboard.conftest import short_answers
from tests.dashboard.test_pages import clean, frame, render


def test_dataset_page_shows_removed_rows_of_a_workspace_on_s3(tmp_path, s3_uri, use_ws):
    ws = Workspace.init(tmp_path / "ws", s3_uri)
    cat = Catalog.open(ws)
    with resources.as_file(resources.files("corpus") / "sample" / "faq_multilingual.jsonl") as f:
        ingest(cat, f, name="faq", category="faq-retrieval")
    apply(cat, versions.resolve(cat, "faq@v1"), short_answers, operation="filter", params={})
    assert str(versions.resolve(cat, "faq@v2").path).startswith(s3_uri)
    use_ws(ws)

    at = clean(render("views/dataset.py", name="faq"))
    assert at.subheader[0].value == "faq@v2"
    examples = frame(at, "detail")
    assert set(examples["reason"]) == {"too_short"} and len(examples) == 3
    assert examples["positive"].notna().all() and examples["query"].notna().all()
    assert frame(at, "negatives").shape[0] == 20  # the sample rows, read from the store too
