"""Read a SPEC.yaml with the line of every key path, so that each mistake found later is a one-line error naming
file, line and key (``SPEC.yaml:7: recipes[1].sparsity: ...``); YAML syntax errors say where, too."""
from __future__ import annotations

from pathlib import Path

from llmprune.errors import UserInputError


class KeyLines:
    """Line numbers of every key path in the YAML document (from PyYAML's node tree)."""

    def __init__(self, path: Path, root):
        self.path, self.lines = path, {}
        self._walk(root, "")

    def _walk(self, node, prefix: str) -> None:
        import yaml

        self.lines.setdefault(prefix, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            seen = {}
            for key, value in node.value:
                name = f"{prefix}.{key.value}" if prefix else str(key.value)
                line = key.start_mark.line + 1
                if key.value in seen:  # PyYAML keeps the last silently
                    raise UserInputError(f"{self.path}:{line}: {name}: given twice (first on line {seen[key.value]}); "
                                         f"keep one")
                seen[key.value] = line
                self.lines[name] = line
                self._walk(value, name)
        elif isinstance(node, yaml.ScalarNode) and node.tag.endswith(":int") and ":" in node.value:
            raise UserInputError(f"{self.path}:{node.start_mark.line + 1}: {prefix}: YAML reads {node.value} as the "
                                 f"base-60 number {yaml.safe_load(node.value)}; quote it: \"{node.value}\"")
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self._walk(item, f"{prefix}[{index}]")

    def error(self, key: str, problem: str) -> UserInputError:
        probe = key
        while probe and probe not in self.lines:
            probe = probe.rpartition(".")[0] if "." in probe else probe.rpartition("[")[0]
        line = self.lines.get(probe, 1)
        return UserInputError(f"{self.path}:{line}: {key or 'document'}: {problem}")


def read_spec(path: Path):
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UserInputError(f"{path}: cannot read the batch spec ({exc.strerror}); give a SPEC.yaml path") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
        context, start = getattr(exc, "context", None), getattr(exc, "context_mark", None)
        if context and start is not None:  # e.g. an unclosed '{': say where it was opened
            problem += f" {context} that starts on line {start.line + 1}"
        raise UserInputError(f"{path}:{line}: invalid YAML ({problem}); fix the syntax") from None
    if root is None or not isinstance(data, dict):
        raise UserInputError(f"{path}:1: a batch spec is a mapping with 'models' and 'recipes'; see llmprune batch --help")
    return data, KeyLines(path, root)
