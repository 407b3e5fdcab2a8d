"""Evaluation harness: strategies compared on datasets at equal budget (``ponder eval``)."""
