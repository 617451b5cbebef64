"""Undo steps that must not stop the other undo steps."""
from __future__ import annotations

import logging
import typing as t

from app.errors import AppError

log = logging.getLogger(__name__)


def quietly(action: t.Callable[..., t.Any], *args: t.Any) -> None:
    """Run an undo step; log instead of raising so the other undo steps still run."""
    try:
        action(*args)
    except AppError as exc:
        log.warning("cleanup step failed step=%s error=%s", action.__name__, exc.message)
    except Exception:  # cleanup must continue whatever happened
        log.exception("cleanup step failed step=%s", action.__name__)
