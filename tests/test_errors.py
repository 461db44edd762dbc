"""Tests for pixeldino.errors: the first line of an exception, for one-line messages."""

from __future__ import annotations

from pixeldino.errors import first_line


def test_first_line() -> None:
    assert first_line(RuntimeError("size mismatch for enc.0\n\tcopying a param ...")) == "size mismatch for enc.0"
    assert first_line(OSError("  \n  not found: x.tif\nmore")) == "not found: x.tif"
    assert first_line(ValueError()) == "ValueError" and first_line(OSError("   ")) == "OSError"
