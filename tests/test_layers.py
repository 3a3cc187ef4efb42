"""The package's layers point one way (experiments -> engine/evaluation -> diffusion/noise -> data/models/config),
with no import cycle, imports inside functions included."""
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from import_graph import GRAPH, PACKAGE, module_name  # noqa: E402  (the one reading of the imports: tools/)

# rank of each layer: a module may import its own layer's package or a lower rank, never a higher one
LAYERS = {"config": 0, "io": 0, "data": 0, "models": 0, "noise": 1, "diffusion": 1, "engine": 2, "evaluation": 2,
          "experiments": 3, "pipeline": 3, "sd": 3}


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


def test_the_architecture_doc_states_these_layers_and_names_every_module():
    """docs/architecture.md's ranks line is LAYERS, and its layer block names every module of the package."""
    doc = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    line = re.search(r"^Ranks: (.+)$", doc, re.M)
    assert line, "docs/architecture.md lost its 'Ranks:' line"
    stated = {name.strip(): int(rank) for part in line.group(1).split("·")
              for names, rank in [part.rsplit(":", 1)] for name in names.split(",")}
    assert stated == LAYERS
    block = doc[line.end():].split("```")[1]
    unnamed = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                     if p.parent != PACKAGE and p.name != "__init__.py" and p.name not in block)
    assert not unnamed, f"modules docs/architecture.md does not name: {unnamed}"


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
