"""Orchestration, Flask-free: services raise AppError subclasses and return models."""
