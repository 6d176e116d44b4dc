"""End-to-end fixtures: the real ``chargewatch serve ingest`` (gunicorn) on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.harness import IngestClient, IngestServer, free_port


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IngestServer]:
    server = IngestServer(tmp_path_factory.mktemp("ingest"), free_port()).start()
    yield server
    server.stop()


@pytest.fixture
def client(server: IngestServer) -> IngestClient:
    return IngestClient(server.url)
