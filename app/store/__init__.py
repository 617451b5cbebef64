"""The embedded store: what libvirt cannot hold, in one SQLite file under STORAGE_ROOT.

Login attempts and admin sessions live here, so every gunicorn worker process sees the same
ones. Schema changes are numbered SQL files in ``migrations/``, applied once each (db.py).
"""
