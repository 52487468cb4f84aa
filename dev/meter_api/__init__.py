"""Local stand-in for the smart-meter vendor's API (see README.md).

Kept import-light: ``readings``, ``query`` and ``faults`` do not need FastAPI, so tests in the
Airflow venv can import them; only ``app`` and ``__main__`` do.
"""
