"""The one error type of the data layer.

A `DataFormatError` always names the file, the record (line/row number, or user/item id), the column and the fix, so a
user can repair their data without reading our code.
"""

from __future__ import annotations


class DataFormatError(ValueError):
    """A data or candidate file cannot be used as it is; the message says where and how to fix it."""
