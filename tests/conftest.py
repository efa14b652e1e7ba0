import pytest


@pytest.fixture(autouse=True)
def _fresh_plugins(monkeypatch):
    """Each test sees the installed plugins, unaffected by a CAPSLAB_DISABLE_PLUGINS in the shell."""
    from capslab.plugin import reset_plugins

    monkeypatch.delenv("CAPSLAB_DISABLE_PLUGINS", raising=False)
    reset_plugins()
    yield
    reset_plugins()
