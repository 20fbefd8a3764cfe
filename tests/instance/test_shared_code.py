"""`instance.py` and `report.py` each run alone on an instance, so their common S3 helpers
are copied, not imported. This keeps the two copies one text."""

from __future__ import annotations

import ast
from pathlib import Path

import supervisor

PACKAGE = Path(supervisor.__file__).parent
BEGIN = "# >>> shared S3 helpers"
END = "# <<< shared S3 helpers <<<"


def shared_block(name: str) -> str:
    text = (PACKAGE / name).read_text(encoding="utf-8")
    assert text.count(BEGIN) == 1 and text.count(END) == 1, f"{name}: one shared block"
    return text[text.index(BEGIN) : text.index(END)]


def test_the_shared_s3_helpers_are_the_same_text_in_both_files() -> None:
    assert shared_block("instance.py") == shared_block("report.py")


def test_the_shared_block_defines_the_helpers_both_files_use() -> None:
    tree = ast.parse(shared_block("instance.py"))
    defined = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    assert defined == {
        "one_line", "_aws_errors", "_error_code", "_describe", "_with_retries", "_s3_client"
    }  # fmt: skip


def test_neither_file_imports_the_package() -> None:
    for name in ("instance.py", "report.py"):
        tree = ast.parse((PACKAGE / name).read_text(encoding="utf-8"))
        imported = [
            node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
        ] + [
            alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
        ]
        assert not [m for m in imported if m.split(".")[0] == "supervisor"], name
