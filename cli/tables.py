"""Plain-text tables for the terminal, shared by the model and admin commands."""

from collections.abc import Sequence


def print_table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> None:
    """Print the header and rows in left-aligned columns, two spaces apart."""
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=False)]
    for row in (header, *rows):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
