import pytest

from cds_server.knowledge.loader import load_knowledge


@pytest.fixture(scope="session")
def kb():
    return load_knowledge()
