"""Fixtures of the embedding-model filter tests."""

from __future__ import annotations

import pytest

from filters.embedder import Embedder
from tests.filters.embedding_data import session_embedder


@pytest.fixture(scope="module")
def embedder(tmp_path_factory) -> Embedder:
    """The bundled all-MiniLM-L6-v2 on a cache shared by the session's tests."""
    return session_embedder(tmp_path_factory.getbasetemp())
