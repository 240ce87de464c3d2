"""How the loader reports: every problem with its file, line, key path and fix."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["ConfigError", "Problems"]


class ConfigError(Exception):
    """A config that cannot be used. ``problems`` holds one line per problem,
    each naming the file, line and key path and saying how to fix it."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


@dataclass
class Problems:
    """Messages gathered while loading, each kept with its line for sorting."""

    label: str
    items: list[tuple[int, str]] = field(default_factory=list)

    def add(self, line: int | None, path: str, message: str, fix: str | None = None) -> None:
        where = f"{self.label}:{line}" if line is not None else self.label
        text = f"{where}: {path}: {message}" if path else f"{where}: {message}"
        if fix:
            text += f"; {fix}"
        self.items.append((line or 0, text))

    def add_unplaced(self, text: str) -> None:
        """A message about another file, already located; listed first."""
        self.items.append((0, text))

    def lines(self) -> list[str]:
        return [text for _, text in sorted(self.items, key=lambda item: item[0])]
