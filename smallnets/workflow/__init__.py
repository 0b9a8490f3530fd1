"""Verbs that span stages: `pipeline` = export then optimize, with its up-to-date key.

Above export and optimize, which import neither each other nor this package (pyproject's import contracts).
"""
