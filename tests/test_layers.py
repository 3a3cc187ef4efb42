"""The package's layers point one way (experiments -> engine/evaluation -> diffusion/noise -> data/models/config),
with no import cycle, imports inside functions included."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "immiscible"
# rank of each layer: a module may import its own layer's package or a lower rank, never a higher one
LAYERS = {"config": 0, "io": 0, "data": 0, "models": 0, "noise": 1, "diffusion": 1, "engine": 2, "evaluation": 2,
          "experiments": 3, "pipeline": 3, "sd": 3}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every immiscible module ``path`` imports, anywhere in the file (module level or inside functions)."""
    tree = ast.parse(path.read_text())
    found = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "immiscible"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if base.split(".")[0] != "immiscible":
                continue
            for a in node.names:  # `from immiscible.noise import native` imports a module
                candidate = f"{base}.{a.name}"
                found.add(candidate if (PACKAGE.parent / candidate.replace(".", "/")).with_suffix(".py").exists()
                          or (PACKAGE.parent / candidate.replace(".", "/")).is_dir() else base)
    return found


GRAPH = {module_name(p): imports(p) for p in PACKAGE.rglob("*.py")}


def layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


def test_every_subpackage_and_top_module_has_a_layer():
    names = {module_name(p).split(".")[1] for p in PACKAGE.rglob("*.py") if module_name(p) != "immiscible"}
    assert names <= set(LAYERS), f"modules without a layer: {sorted(names - set(LAYERS))}"


def upward_imports(graph: dict) -> list[str]:
    bad = []
    for module, targets in graph.items():
        own = layer(module)
        for target in targets:
            other = layer(target)
            if own is None or other is None or module.split(".")[1] == target.split(".")[1]:
                continue
            if other > own or (other == own and own > 0):
                bad.append(f"{module} -> {target}")
    return sorted(bad)


def test_imports_point_down_only():
    bad = upward_imports(GRAPH)
    assert not bad, "imports that point up or sideways: " + ", ".join(bad)


def test_no_import_cycle():
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH.get(v, ()):
            if w not in GRAPH:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in GRAPH.get(v, ()):
                cycles.append(sorted(component))

    for v in GRAPH:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_the_checker_sees_function_level_imports_and_flags_an_upward_one():
    timing = (PACKAGE / "experiments" / "timing.py").read_text()
    assert "    from immiscible.data import load_dataset" in timing  # an import inside a function
    assert "immiscible.data" in GRAPH["immiscible.experiments.timing"]
    graph = {**GRAPH, "immiscible.noise.source": GRAPH["immiscible.noise.source"] | {"immiscible.engine.loop"}}
    assert upward_imports(graph) == ["immiscible.noise.source -> immiscible.engine.loop"]
