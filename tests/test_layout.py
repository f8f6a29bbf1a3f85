"""The package's architecture, read from its source: the stages are floors, imports only run down
(or within a floor), and no module imports itself through others; and each module is short enough
to read in one sitting.

Every ``import`` and ``from ... import`` counts, at the top of a module or inside a function
(the lazy imports that keep torch out of the fast path still tie modules together), relative or
absolute. Nothing is imported: the modules are parsed, so this takes milliseconds.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "fer_cli"

# Top floor first: files (or folders, ending in /) under fer_cli/. A module imports its own floor
# or lower ones, never a higher one.
FLOORS = {
    "cli": (
        "__init__.py",
        "cli/",
        "__main__.py",
        "serve/",
    ),  # __init__: the Python API's names  # the front ends: the command line, and fer serve
    "api": ("api.py",),  # the Python API: the one door to the engine for the front ends and for other programs
    "engine": ("engine/",),  # runs models over data: train, predict, ensemble, calibration, metrics
    "models": ("models/",),  # architectures, Classifier, checkpoints, exported models, the zoo
    "outputs": ("outputs/",),  # result records and writers; annotated copies (drawn on the inputs)
    "inputs": ("inputs/",),  # images, data sets, faces, augmentation, batches
    "base": ("version.py", "device.py", "errors.py", "files.py"),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str) -> list[tuple[str, int]]:
    """The fer_cli modules ``name`` imports, with the line of each import."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: up level - 1 packages from this module's own
                parents = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(parents + ([node.module] if node.module else []))
            # `from package import module` imports the module; `from module import name`, the module
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:  # `import fer_cli.x.y` names the deepest module; others vanish
                target = target.rpartition(".")[0]
            if target and target != name:
                found.append((target, node.lineno))
    return found


GRAPH = {name: imports(name) for name in MODULES}


def where(importer: str, imported: str) -> str:
    line = next(line for target, line in GRAPH[importer] if target == imported)
    return f"{importer} -> {imported} ({MODULES[importer].relative_to(PACKAGE.parent)}:{line})"


def find_circle() -> list[str] | None:
    """A list of modules each importing the next and the last the first, or None."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" once fully explored
    path: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = "open"
        path.append(name)
        for target, _ in GRAPH[name]:
            if state.get(target) == "open":
                return path[path.index(target) :]
            if target not in state and (circle := visit(target)):
                return circle
        state[name] = "done"
        path.pop()
        return None

    for name in MODULES:
        if name not in state and (circle := visit(name)):
            return circle
    return None


def floor(name: str) -> int:
    """The module's floor, counted from the top (0: cli)."""
    relative = MODULES[name].relative_to(PACKAGE).as_posix()
    for level, entries in enumerate(FLOORS.values()):
        if any(relative == entry or (entry.endswith("/") and relative.startswith(entry)) for entry in entries):
            return level
    raise AssertionError(f"fer_cli/{relative} is on no floor: add it to FLOORS in {Path(__file__).name}")


def test_the_graph_sees_every_kind_of_import():
    edges = {name: {target for target, _ in targets} for name, targets in GRAPH.items()}
    assert "fer_cli.errors" in edges["fer_cli.cli.app"]  # top-level, relative
    assert "fer_cli.engine.train.run" in edges["fer_cli.cli.train"]  # inside a function
    # inside a function, keeping torch out
    assert "fer_cli.models.checkpoint" in edges["fer_cli.models.checkpoint_runner"]
    assert "fer_cli" in edges["fer_cli.serve.app"]  # `from .. import __version__`: the package itself
    assert "fer_cli.engine.distributed" in edges["fer_cli.engine.train.run"]  # `from .. import distributed`: a module
    assert "fer_cli.inputs.face_detector" in edges["fer_cli.inputs.faces"]  # under `if TYPE_CHECKING:`


def test_every_module_is_on_a_floor():
    for name in MODULES:
        floor(name)


def test_imports_only_run_down_the_floors():
    names = list(FLOORS)
    upward = [
        f"{where(importer, imported)}: {names[floor(importer)]} imports {names[floor(imported)]}"
        for importer, targets in GRAPH.items()
        for imported, _ in targets
        if floor(imported) < floor(importer)
    ]
    assert not upward, "imports that run up the floors (" + " > ".join(names) + "):\n" + "\n".join(sorted(set(upward)))


def test_a_stage_package_imports_nothing():
    """Importing one module of a stage never runs the others (nor brings torch to the fast path)."""
    for path in MODULES.values():
        if path.name == "__init__.py" and path.parent != PACKAGE:
            tree = ast.parse(path.read_text())
            statements = [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]
            assert not statements, f"{path.relative_to(PACKAGE.parent)}:{statements[0].lineno} imports"


def test_no_import_circle():
    circle = find_circle()
    assert circle is None, "import circle: " + ", ".join(where(a, b) for a, b in zip(circle, circle[1:] + circle[:1]))


# A module is small enough to read in one sitting: at most LONGEST lines, unless its docstring says why it is one
# piece, in a sentence beginning with LONG_BECAUSE ("Long because the table of ... reads best whole").
LONGEST = 600
LONG_BECAUSE = "Long because"
# Modules over LONGEST for now, each with why and until when (files under fer_cli/). Remove an entry once its module
# is split; the test fails on an entry that is no longer needed.
TOO_LONG_FOR_NOW: dict[str, str] = {}


def test_no_module_is_too_long_to_read_in_one_sitting():
    too_long = []
    for path in MODULES.values():
        relative = path.relative_to(PACKAGE).as_posix()
        source = path.read_text()
        lines = len(source.splitlines())
        if lines > LONGEST and relative not in TOO_LONG_FOR_NOW:
            if LONG_BECAUSE not in (ast.get_docstring(ast.parse(source)) or ""):
                too_long.append(f"fer_cli/{relative}: {lines} lines")
    assert not too_long, (
        f"modules over {LONGEST} lines: split them by what they do, or say why in the docstring "
        f"('{LONG_BECAUSE} ...'):\n" + "\n".join(too_long)
    )


def test_every_exception_to_the_length_rule_is_still_needed():
    for relative in TOO_LONG_FOR_NOW:
        path = PACKAGE / relative
        assert path.exists(), f"fer_cli/{relative} is gone: remove it from TOO_LONG_FOR_NOW"
        lines = len(path.read_text().splitlines())
        assert lines > LONGEST, f"fer_cli/{relative} is {lines} lines now: remove it from TOO_LONG_FOR_NOW"
