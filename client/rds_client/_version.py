"""The version of rds-client (kept in one place for pyproject and the User-Agent)."""
__version__ = "0.1.0"
