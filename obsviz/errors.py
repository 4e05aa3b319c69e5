"""The engine's error types: what went wrong, and which argument it was about."""

from __future__ import annotations


class ArgumentError(ValueError):
    """A bad argument. ``argument`` names it (``"nnz"``, ``"view_shape"``, ``"H"``, …) so a caller
    routes the message to the right input by name, never by parsing the text."""

    def __init__(self, argument: str, message: str) -> None:
        super().__init__(message)
        self.argument = argument
