"""Regenerate the reference tables in docs/ from the code: ``python -m pushsvc._docs``.

The tests fail when a table in docs/ no longer matches the code.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pushsvc.protocol.codes import close_codes_markdown
from pushsvc.settings import settings_markdown

BEGIN = "<!-- generated: do not edit below; python -m pushsvc._docs -->\n"


def generated() -> dict[str, str]:
    return {
        "reference/close-codes.md": close_codes_markdown(),
        "reference/settings.md": settings_markdown(),
    }


def render(current: str, table: str) -> str:
    head = current.split(BEGIN)[0] if BEGIN in current else current
    return head + BEGIN + table


def main(docs: Path = Path("docs")) -> int:
    for rel, table in generated().items():
        path = docs / rel
        current = path.read_text() if path.exists() else ""
        path.write_text(render(current, table))
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
