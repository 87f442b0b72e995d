"""Helpers shipped beside the example PyFlink jobs (proves that shipped modules reach the workers)."""
