import pytest


@pytest.fixture
def tmp_results(tmp_path, monkeypatch):
    """Run commands inside a temporary folder so default result paths never touch the repo."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
