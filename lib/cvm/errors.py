"""The one error type a user sees for bad input."""


class InputError(ValueError):
    """Bad input: the message names the file or table, the column, how many rows, and what to do."""
