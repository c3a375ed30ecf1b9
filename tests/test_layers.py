"""The package's layers: every import, at the top of a module or inside a function, points down
(or within its own layer), so the import graph has no cycle. README.md's module table follows
this order."""

import ast
import pathlib

import distilbert_jax as dj

PACKAGE = pathlib.Path(dj.__file__).parent
CONFIGS = PACKAGE.parent / "configs"  # installed as distilbert_jax.configs

# Bottom to top. A module may import its own layer and those below; a name matches a module and
# everything under it.
LAYERS = [
    ("foundations", ["errors", "settings", "tasks", "threefry", "distributed", "config", "storage",
                     "metrics", "pooling"]),
    ("model", ["models", "losses", "student", "hf", "sharding", "tokenizer"]),
    ("data and runtime", ["data", "exported", "configs"]),
    ("training pieces and pipelines", ["train.state", "train.step", "train.checkpoint", "train.reporting",
                                       "train.workdir", "train.preemption", "train.programs",
                                       "train.checks", "train.loop", "train", "pipelines"]),
    ("jobs", ["train.finetune", "train.distill"]),
    ("experiments and dispatch", ["experiments.miniature", "experiments", "jobs"]),
    ("entry points", ["startup", "predict", "export", "plan", "experiments.sweep", "main", ""]),  # "": the top
]


def module_files() -> dict[str, pathlib.Path]:
    files = {}
    for root, prefix in ((PACKAGE, "distilbert_jax"), (CONFIGS, "distilbert_jax.configs")):
        for path in root.rglob("*.py"):
            parts = path.relative_to(root).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            files[".".join((prefix, *parts))] = path
    return files


def imported_modules(path: pathlib.Path, modules) -> set[str]:
    """The package modules `path` imports, at the top or inside a function; not under
    `if __name__ == "__main__":`, which runs only when the module is the program's entry point."""
    names = set()
    tree = ast.parse(path.read_text())
    tree.body = [node for node in tree.body if not (
        isinstance(node, ast.If) and "__main__" in ast.unparse(node.test))]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.update(f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                         for a in node.names)
    return {n for n in names if n in modules}


def layer_of(module: str) -> int:
    """The layer of the most specific name in LAYERS that `module` falls under."""
    name = module.removeprefix("distilbert_jax").removeprefix(".")
    matches = [(len(entry), i) for i, (_, entries) in enumerate(LAYERS) for entry in entries
               if name == entry or name.startswith(entry + ".") or (entry == "" and name == "")]
    assert matches, f"{module} is in no layer of LAYERS: add it"
    return max(matches)[1]


def test_every_import_points_down_the_layers():
    modules = module_files()
    upward = [f"{m} ({LAYERS[layer_of(m)][0]}) imports {d} ({LAYERS[layer_of(d)][0]})"
              for m, path in sorted(modules.items()) for d in sorted(imported_modules(path, modules))
              if d != m and layer_of(d) > layer_of(m)]
    assert not upward, "\n".join(upward)


def test_the_import_graph_has_no_cycle():
    modules = module_files()
    graph = {m: imported_modules(p, modules) - {m} for m, p in modules.items()}
    done, path = set(), []

    def visit(module):
        if module in path:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(module):] + [module]))
        if module in done:
            return
        path.append(module)
        for dependency in sorted(graph[module]):
            visit(dependency)
        path.pop()
        done.add(module)
    for module in sorted(graph):
        visit(module)


def test_the_task_registry_imports_nothing_of_the_package():
    """tasks.py is read by data, pipelines, export and training alike: it depends on none of them."""
    assert imported_modules(PACKAGE / "tasks.py", module_files()) == set()
