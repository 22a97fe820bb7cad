"""The inspection log: append-only, hash-chained records of every decision (SQLite or PostgreSQL).

``open_log(url)`` returns a ``SqlInspectionLog`` (the ``InspectionLog`` protocol of
``records``); ``query``, ``export`` and ``retention`` work on it; ``chain`` verifies it.
"""
