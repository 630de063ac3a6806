"""The shape of the source tree: the largest modules, the longest functions, and the imports between
packages, so that growth is seen in numbers rather than in a reading.

    python benchmarks/code_shape.py [--src src/imgclf] [--top 10]

Counts lines of each module (all lines) and of each function or method (from `def` to its last line,
decorators and docstring included), as `ast` sees them.
"""

from __future__ import annotations

import argparse
import ast
from collections import Counter
from pathlib import Path


def functions(tree: ast.AST, prefix: str = ""):
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield f"{prefix}{node.name}", node.end_lineno - node.lineno + 1
            yield from functions(node, f"{prefix}{node.name}.")
        elif isinstance(node, ast.ClassDef):
            yield from functions(node, f"{prefix}{node.name}.")


def package_of(module: str, root: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 2 or (root / Path(*parts[1:])).is_dir() else module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=Path(__file__).resolve().parents[1] / "src" / "imgclf")
    parser.add_argument("--top", type=int, default=10)
    args = parser.parse_args()
    modules, longest, edges = [], [], Counter()
    for path in sorted(args.src.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        relative = path.relative_to(args.src.parent)
        name = ".".join(relative.with_suffix("").parts).removesuffix(".__init__")
        modules.append((len(text.splitlines()), str(relative)))
        tree = ast.parse(text)
        longest += [(lines, f"{relative}:{function}") for function, lines in functions(tree)]
        source = package_of(name, args.src.parent)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("imgclf"):
                target = package_of(node.module, args.src.parent)
                if target != source and not target.startswith(source + "."):
                    edges[(source, target)] += 1
    print(f"{len(modules)} modules, {sum(n for n, _ in modules):,} lines")
    print(f"\nthe {args.top} largest modules (lines):")
    for lines, name in sorted(modules, reverse=True)[: args.top]:
        print(f"  {lines:5d}  {name}")
    print(f"\nthe {args.top} longest functions (lines):")
    for lines, name in sorted(longest, reverse=True)[: args.top]:
        print(f"  {lines:5d}  {name}")
    over = [name for lines, name in modules if lines > 600 and not name.endswith("config.py")]
    print(f"\nmodules over 600 lines (config.py aside): {len(over)} {over}")
    print(f"functions over 80 lines: {sum(1 for lines, _ in longest if lines > 80)}")
    print("\nimports between packages (importer -> imported: import statements):")
    for (source, target), count in sorted(edges.items()):
        print(f"  {source} -> {target}: {count}")


if __name__ == "__main__":
    main()
