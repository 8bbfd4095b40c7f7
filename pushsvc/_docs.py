"""Regenerate what is generated from the code: ``python -m pushsvc._docs``.

- the reference tables at the end of pages in docs/ (everything after ``BEGIN``);
- the close-code block of ``static/pushsvc.js`` and ``static/pushsvc.d.ts`` (between
  ``STATIC_BEGIN`` and ``STATIC_END``), from ``pushsvc.protocol.codes``.

The tests fail when any of them no longer matches the code.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pushsvc.protocol.codes import close_codes_dts, close_codes_js, close_codes_markdown
from pushsvc.settings import settings_markdown

BEGIN = "<!-- generated: do not edit below; python -m pushsvc._docs -->\n"
STATIC_BEGIN = "// <generated: close codes; do not edit; python -m pushsvc._docs>\n"
STATIC_END = "// </generated: close codes>\n"
STATIC = Path(__file__).resolve().parent / "static"


def generated() -> dict[str, str]:
    """docs/-relative page -> the table at its end."""
    return {
        "reference/close-codes.md": close_codes_markdown(),
        "reference/settings.md": settings_markdown(),
    }


def generated_static() -> dict[str, str]:
    """static/ file name -> the block between its markers."""
    return {"pushsvc.js": close_codes_js(), "pushsvc.d.ts": close_codes_dts()}


def render(current: str, table: str) -> str:
    head = current.split(BEGIN)[0] if BEGIN in current else current
    return head + BEGIN + table


def embedded(text: str) -> str | None:
    """The generated block of a static file (``None`` without the markers)."""
    if STATIC_BEGIN not in text or STATIC_END not in text:
        return None
    return text.split(STATIC_BEGIN, 1)[1].split(STATIC_END, 1)[0]


def render_static(current: str, block: str) -> str:
    if embedded(current) is None:
        raise ValueError(f"no {STATIC_BEGIN.strip()!r} ... {STATIC_END.strip()!r} markers")
    head, rest = current.split(STATIC_BEGIN, 1)
    return head + STATIC_BEGIN + block + STATIC_END + rest.split(STATIC_END, 1)[1]


def main(docs: Path = Path("docs"), static: Path = STATIC) -> int:
    for rel, table in generated().items():
        path = docs / rel
        current = path.read_text() if path.exists() else ""
        path.write_text(render(current, table))
        print(f"wrote {path}")
    for name, block in generated_static().items():
        path = static / name
        path.write_text(render_static(path.read_text(), block))
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
