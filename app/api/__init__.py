"""HTTP layer: one flask-smorest Blueprint per resource. Views parse, call one service, return."""
from __future__ import annotations

import typing as t

from flask import current_app
from flask_smorest import Blueprint as _Blueprint
from webargs.flaskparser import FlaskParser


class _Parser(FlaskParser):
    # The contract says schema validation failures are 400, not webargs' 422.
    DEFAULT_VALIDATION_STATUS = 400


class Blueprint(_Blueprint):
    ARGUMENTS_PARSER = _Parser()


def services() -> t.Any:
    """The service bundle the app factory attached (see app.Services)."""
    return current_app.extensions["rds"]
