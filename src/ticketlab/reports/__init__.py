"""Reports: tables (Markdown/CSV) and plots written from finished runs.

The layer above ``experiments`` (which writes runs) and ``analysis`` (pure functions over masks and
records): a report reads the one and uses the other, so neither of those imports the other.
"""
