"""Configuration: DEFAULTS, then the environment, then a test mapping; validated at boot.

Names follow the original run-dat-sheesh service where it had one (``API_KEY``, ``PORT``,
``MAX_VMS``, ...). A bad value stops the service at start with a message naming the variable.
"""
from app.config.load import load_settings, validate
from app.config.settings import (DEV_ADMIN_PASSWORD, DEV_API_KEY, DEV_SECRET, ENV_NAMES,
                                 FIELD_FOR_KEY, MIN_SECRET_LENGTH, REPO_ROOT, ConfigError,
                                 Settings, is_loopback, parse_shapes)

__all__ = ["DEV_ADMIN_PASSWORD", "DEV_API_KEY", "DEV_SECRET", "ENV_NAMES", "FIELD_FOR_KEY",
           "MIN_SECRET_LENGTH", "REPO_ROOT", "ConfigError", "Settings", "is_loopback",
           "load_settings", "parse_shapes", "validate"]
