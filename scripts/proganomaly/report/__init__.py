"""Report figures and tables: pure functions from the stages' documented output formats to matplotlib figures.

Each module takes already-loaded data (DataFrames, dicts, arrays) and returns a Figure or a table; the thin
`scripts/plot_*.py` rule scripts do the reading and writing.
"""
