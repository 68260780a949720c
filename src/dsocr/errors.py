"""Errors that reach the user as one line, never as a traceback."""


class DsocrError(Exception):
    """A problem with the user's input (file, option, weights) that the CLI reports in one line."""
