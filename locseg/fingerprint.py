"""Short digests of what a stage's results depend on besides its config: the data files it reads and the
locseg code it runs.

Snakemake reruns a job when a parameter changes, but it sees neither the thousands of dataset files a job
opens (declaring them as inputs makes the DAG slow) nor the library code its script imports. The
workflow passes these digests as parameters instead. Data is fingerprinted by (path, size, mtime) — one
`stat` per file, nothing read — so a no-op dry run stays fast at VOC + COCO scale. Code is fingerprinted by
the syntax tree of every locseg module a script imports (transitively), so comments, formatting and
docstrings do not rerun anything, while any other edit reruns exactly the stages that import it.
"""

from __future__ import annotations

import ast
import hashlib
import os
from functools import cache
from pathlib import Path

PACKAGE = "locseg"
PACKAGE_DIR = Path(__file__).resolve().parent


def stat_files(paths) -> dict[str, tuple[int, int] | None]:
    """path -> (size, mtime in ns), None for a missing (or unreadable) file: one `stat` each, nothing read."""
    stats = {}
    for path in map(str, paths):
        try:
            st = os.stat(path)
        except OSError:
            stats[path] = None
        else:
            stats[path] = (st.st_size, st.st_mtime_ns)
    return stats


def tree_files(directory) -> list[str]:
    """Every file under `directory` (none if it does not exist)."""
    files, todo = [], [str(directory)]
    while todo:
        try:
            entries = list(os.scandir(todo.pop()))
        except OSError:
            continue
        for e in entries:
            (todo if e.is_dir() else files).append(e.path)
    return files


def stats_fingerprint(stats: dict[str, tuple[int, int] | None], contents: bool = True) -> str:
    """Digest of the files' (path, size, mtime); with contents=False only of which of them exist."""
    lines = [f"{path}\t{stats[path] if contents else stats[path] is not None}" for path in sorted(stats)]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def code_fingerprint(script) -> str:
    """Digest of the code of every locseg module `script` imports, directly or through other modules."""
    seen: set[str] = set()
    todo = sorted(_module_info(Path(script))[0])
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += _module_info(_module_file(name))[0]
    h = hashlib.sha256()
    for name in sorted(seen):
        h.update(f"{name}\t{_module_info(_module_file(name))[1]}\n".encode())
    return h.hexdigest()[:16]


def _module_file(name: str) -> Path:
    """locseg.a.b -> <package>/a/b.py or <package>/a/b/__init__.py (None if neither exists)."""
    rel = Path(*name.split(".")[1:])
    for path in ((PACKAGE_DIR / rel).with_suffix(".py") if rel.parts else None, PACKAGE_DIR / rel / "__init__.py"):
        if path is not None and path.is_file():
            return path
    return None


def _module_info(path: Path) -> tuple[list[str], str]:
    """(locseg modules `path` imports, digest of its code), parsed once per file version."""
    st = path.stat()
    return _parsed(path, st.st_mtime_ns, st.st_size)


@cache
def _parsed(path: Path, mtime_ns: int, size: int) -> tuple[list[str], str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return sorted(_imports(tree)), _digest(tree)


def _imports(tree: ast.Module) -> set[str]:
    """locseg modules (and their parent packages) imported anywhere, also inside functions."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            # `from locseg.models import backbones` imports the submodule too.
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    found = set()
    for name in names:
        parts = name.split(".")
        if parts[0] == PACKAGE:
            found |= {p for p in (".".join(parts[:i]) for i in range(1, len(parts) + 1)) if _module_file(p)}
    return found


def _digest(tree: ast.Module) -> str:
    """The syntax tree without docstrings: a comment, formatting or docstring edit leaves it unchanged."""
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return hashlib.sha256(ast.dump(tree).encode()).hexdigest()
