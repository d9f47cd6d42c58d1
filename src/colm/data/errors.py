"""The one error type the data layer raises for bad input."""
from __future__ import annotations


class DataError(ValueError):
    """Bad or missing training data.

    The message always says where the problem is (file and 1-based line, or the field and
    what was expected), so a user can fix the input without reading colm's code. It derives
    from ValueError so callers that already catch ValueError keep working.
    """
