"""The package's public surface and the generated reference stay complete and current."""

from __future__ import annotations

import dataclasses
import types
from pathlib import Path

import pushsvc
from pushsvc import _docs, exceptions
from pushsvc.protocol import codes
from pushsvc.settings import DESCRIPTIONS, Settings

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_generated_reference_tables_match_the_code() -> None:
    for rel, table in _docs.generated().items():
        text = (DOCS / rel).read_text()
        assert text.endswith(_docs.BEGIN + table), f"docs/{rel} is stale: python -m pushsvc._docs"


def test_every_setting_is_described() -> None:
    assert set(DESCRIPTIONS) == {f.name for f in dataclasses.fields(Settings)}


def test_every_error_close_code_is_in_the_table() -> None:
    def subclasses(cls: type) -> list[type]:
        return [cls] + [s for c in cls.__subclasses__() for s in subclasses(c)]

    for cls in subclasses(exceptions.PushError):
        assert cls.close_code in codes.CLOSE_CODES, cls


def test_all_is_complete_and_sorted() -> None:
    public = {
        n
        for n in dir(pushsvc)
        if not n.startswith("_") and not isinstance(getattr(pushsvc, n), types.ModuleType)
    }
    assert public <= set(pushsvc.__all__) | {"__version__"}
    assert pushsvc.__all__ == sorted(pushsvc.__all__, key=lambda s: (s.startswith("_"), s))
