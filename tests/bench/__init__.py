"""`make bench`: measured figures for issue 6 (run with `python -m tests.bench`).

No file here is named like a test, so pytest collects nothing from this folder.
"""
