"""The package's imports form no circle: library <- backends <- election <- outputs <- cli.

Every `from .x import` and `import leaderd.x` in leaderd/ counts, lazy and
TYPE_CHECKING ones included, since a circle of those is still a circle of ideas.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "leaderd"


def imports() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.glob("*.py"):
        name = path.stem
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    targets.add(node.module.split(".")[0])
                else:
                    targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("leaderd."):
                targets.add((node.module or "").split(".")[1])
        graph[name] = {t for t in targets if (PACKAGE / f"{t}.py").exists()} - {name}
    return graph


def test_no_module_of_leaderd_imports_itself_back() -> None:
    graph = imports()
    graph.pop("__init__", None)  # the package's face re-exports; nothing imports it
    for deps in graph.values():
        deps.discard("__init__")
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> None:
        if node in path:
            raise AssertionError("import circle: " + " -> ".join([*path[path.index(node) :], node]))
        if node in done:
            return
        for dep in sorted(graph.get(node, ())):
            visit(dep, [*path, node])
        done.add(node)

    for node in sorted(graph):
        visit(node, [])


def test_the_library_does_not_import_the_election_or_the_outputs() -> None:
    library = {"strategy", "errors", "_core", "_wire", "lock", "aio", "connection", "clock"}
    above = {"election", "daemon", "cli", "config", "http", "metrics", "logs", "statusfile",
             "k8s", "child", "operator", "redis_backend", "backend", "default_backend"}  # fmt: skip
    graph = imports()
    for module in library:
        assert not graph[module] & above, (module, graph[module] & above)


def test_the_daemon_never_loads_the_sync_client_and_the_root_still_exports_it() -> None:
    """`leaderd.LockClient` and friends are imported on first use, so the daemon's idle
    memory (a measured goal) does not carry the synchronous client."""
    import subprocess
    import sys

    code = (
        "import sys, leaderd.daemon, leaderd.cli\n"
        "assert 'leaderd.lock' not in sys.modules, 'the daemon imported leaderd.lock'\n"
        "from leaderd import AutoRefresh, Lock, LockClient\n"
        "import leaderd\n"
        "assert leaderd.LockClient is LockClient and 'leaderd.lock' in sys.modules\n"
        "assert all(hasattr(leaderd, name) for name in leaderd.__all__)\n"
        "try:\n    leaderd.Nope\nexcept AttributeError as e:\n    assert 'Nope' in str(e)\n"
        "from leaderd.daemon import trim_heap\ntrim_heap()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=PACKAGE.parent)  # fmt: skip
    assert done.returncode == 0, done.stderr
