import pytest


@pytest.fixture
def errors(monkeypatch):
    """Record error notifications of the widgets instead of showing them (info and warnings are dropped)."""
    from napari_vitseg._widgets import _notify

    seen: list[str] = []
    monkeypatch.setattr(_notify, "show_error", lambda msg: seen.append(str(msg)))
    monkeypatch.setattr(_notify, "show_info", lambda msg: None)
    monkeypatch.setattr(_notify, "show_warning", lambda msg: None)
    return seen
