"""Names from outside (class names, model names, file paths) made safe to print on a terminal.

A checkpoint's class names, a file's name and a votes file's columns are data: on a terminal their control
characters would act (``ESC[2J`` clears the screen, OSC 8 makes a link, OSC 52 writes the clipboard) and, given to
rich as a string, their square brackets would be read as markup (``[/]`` raises MarkupError). ``printable`` writes
control characters as escapes; ``plain`` and ``markup_safe`` add rich's side: every name printed goes through one.
"""

from __future__ import annotations

from rich.markup import escape
from rich.text import Text


def printable(text: str) -> str:
    """``text`` with control characters (a newline in a file name, a tab, an escape) written as
    escapes, so that one path stays on one line of a table or a message, and no escape sequence acts."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def plain(text, style: str = "") -> Text:
    """A name as a rich ``Text`` cell or header: shown as written (escaped), never read as markup."""
    return Text(printable(text), style=style)


def markup_safe(text) -> str:
    """A name inside a line of rich markup (``f"[yellow]note:[/] {markup_safe(path)}"``)."""
    return escape(printable(text))
