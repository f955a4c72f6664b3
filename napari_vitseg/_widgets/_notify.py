"""napari notifications of the widgets, in one place.

Every widget module calls these (as ``_notify.show_error(...)``, looked up at call time), so
tests record what the user would see by patching this module once.
"""

from __future__ import annotations

__all__ = ["show_error", "show_info", "show_warning"]


def _notifications():
    from napari.utils import notifications

    return notifications


def show_error(msg: str) -> None:
    """Show an error notification."""
    _notifications().show_error(msg)


def show_warning(msg: str) -> None:
    """Show a warning notification."""
    _notifications().show_warning(msg)


def show_info(msg: str) -> None:
    """Show an info notification."""
    _notifications().show_info(msg)
