"""The value co-creation scorecard: which KPIs count, their targets and weights, grouped in perspectives.

A scorecard is a YAML file (``COPULSE_SCORECARD_FILE``; default: the shipped
``copulse/scorecard/default.yaml``)::

    name: default                 # shown in reports
    version: "2024.1"             # optional human version; the stored version adds a content hash
    min_perspectives: 1           # fewer sufficient perspectives -> the index is insufficient (NULL)
    perspectives:
      financial:                  # perspective id (letters, digits, '_')
        label: Financial          # optional display name
        weight: 0.25              # relative weight of the perspective in the index (>= 0)
        kpis:
          aov:                    # a KPI of copulse/scorecard/catalogue.py
            target: 350           # the value that scores attainment 1 (full)
            floor: 200            # optional: the value that scores 0 (default: 0 for higher-is-better)
            direction: higher     # higher | lower (which way is better; default higher)
            weight: 1             # relative weight inside the perspective (>= 0; 0 = shown, not scored)
            min_sample: 20        # denominator (here: orders) below which the KPI is insufficient
            per: 1h               # only for additive KPIs (revenue, orders, ...): target/floor are per 1h
            by_granularity:       # optional overrides of target / floor / min_sample per window size
              1m: {target: 300, floor: 150, min_sample: 10}

:func:`load_scorecard` parses and validates it; every problem is reported with the file, line, the path of
the field and how to fix it (:class:`ScorecardError`). :func:`Scorecard.version_id` is the stored version:
a content hash (12 hex digits of SHA-256 over the validated scorecard, so comments and formatting do not
matter, nor fields left at their default), prefixed by the human ``version`` when there is one. The index itself is computed by
:mod:`copulse.scorecard.index`.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from copulse.scorecard.catalogue import SCORECARD_KPIS, Direction
from copulse.settings import duration_seconds

DEFAULT_SCORECARD = "default.yaml"
_ID = re.compile(r"^[a-z][a-z0-9_]*$")


# ----------------------------------------------------------------------------------------------- models
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Override(_Strict):
    target: float | None = None
    floor: float | None = None
    min_sample: int | None = Field(None, ge=0)


class KpiSpec(_Strict):
    target: float
    floor: float | None = None
    direction: Direction = "higher"
    weight: float = Field(1.0, ge=0)
    min_sample: int = Field(0, ge=0)
    per: str | None = None
    label: str | None = None
    by_granularity: dict[str, Override] = {}


class PerspectiveSpec(_Strict):
    label: str | None = None
    weight: float = Field(ge=0)
    kpis: dict[str, KpiSpec] = Field(min_length=1)


class ScorecardModel(_Strict):
    name: str = "scorecard"
    version: str | None = None
    description: str | None = None
    min_perspectives: int = Field(1, ge=1)
    perspectives: dict[str, PerspectiveSpec] = Field(min_length=1)


# ----------------------------------------------------------------------------------------------- resolved view
@dataclass(frozen=True)
class KpiTarget:
    """One KPI of a perspective with the target, floor and minimum sample in force for one granularity."""

    perspective: str
    name: str
    label: str
    unit: str
    sample_column: str
    direction: str
    weight: float
    target: float
    floor: float | None
    min_sample: int


@dataclass(frozen=True)
class Perspective:
    name: str
    label: str
    weight: float
    kpis: tuple[KpiTarget, ...]


class Scorecard:
    """A validated scorecard. ``targets(granularity_seconds)`` resolves per-granularity overrides and the
    ``per`` scaling of additive KPIs, which is what :func:`copulse.scorecard.index.compute` needs."""

    def __init__(self, model: ScorecardModel, source: str = "<memory>") -> None:
        self.model = model
        self.source = source

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def label(self) -> str | None:
        return self.model.version

    @property
    def min_perspectives(self) -> int:
        return self.model.min_perspectives

    @cached_property
    def content_hash(self) -> str:
        # defaults left out: spelling a default out (direction: higher) or a new optional field of a later
        # copulse does not make a new version
        data = self.model.model_dump(mode="json", exclude_defaults=True)
        canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    @cached_property
    def version_id(self) -> str:
        """'2024.1-3f9a2b1c4d5e' (human version + 12 hex digits of the content hash), or the hash alone."""
        short = self.content_hash[:12]
        return f"{self.model.version}-{short}" if self.model.version else short

    @property
    def perspective_names(self) -> tuple[str, ...]:
        return tuple(self.model.perspectives)

    def targets(self, granularity_seconds: int) -> tuple[Perspective, ...]:
        out = []
        for pname, p in self.model.perspectives.items():
            kpis = []
            for kname, spec in p.kpis.items():
                kdef = SCORECARD_KPIS[kname]
                target, floor, min_sample = _effective(spec, granularity_seconds)
                kpis.append(
                    KpiTarget(pname, kname, spec.label or kdef.label, kdef.unit, kdef.sample_column, spec.direction,
                              spec.weight, target, floor, min_sample)
                )
            out.append(Perspective(pname, p.label or pname.replace("_", " ").capitalize(), p.weight, tuple(kpis)))
        return tuple(out)

    def to_dict(self) -> dict:
        return self.model.model_dump(mode="json", exclude_none=True)

    def __repr__(self) -> str:
        return f"Scorecard({self.name!r}, version={self.version_id!r}, source={self.source!r})"


def _effective(spec: KpiSpec, granularity_seconds: int) -> tuple[float, float | None, int]:
    target, floor, min_sample = spec.target, spec.floor, spec.min_sample
    for key, override in spec.by_granularity.items():
        if duration_seconds(key) == granularity_seconds:
            target = override.target if override.target is not None else target
            floor = override.floor if override.floor is not None else floor
            min_sample = override.min_sample if override.min_sample is not None else min_sample
            return target, floor, min_sample  # an override is given for this window size as it is: no `per`
    if spec.per:
        factor = granularity_seconds / duration_seconds(spec.per)
        target = target * factor
        floor = None if floor is None else floor * factor
    return target, floor, min_sample


# ----------------------------------------------------------------------------------------------- errors
@dataclass(frozen=True)
class Issue:
    path: tuple
    message: str
    line: int | None = None

    def text(self) -> str:
        where = ".".join(str(p) for p in self.path) or "(top level)"
        return f"line {self.line}: {where}: {self.message}" if self.line else f"{where}: {self.message}"


class ScorecardError(ValueError):
    """The scorecard cannot be used; ``issues`` lists every problem with its line and a fix."""

    def __init__(self, source: str, issues: list[Issue]) -> None:
        self.source = source
        self.issues = issues = sorted(issues, key=lambda i: i.line or 0)
        lines = "\n".join(f"  - {i.text()}" for i in issues)
        super().__init__(
            f"scorecard {source} is invalid ({len(issues)} problem{'s' if len(issues) != 1 else ''}):\n{lines}\n"
            "  (format: docs/scorecard.md; example: the shipped "
            "copulse/scorecard/default.yaml)"
        )


# ----------------------------------------------------------------------------------------------- loading
def default_scorecard_path() -> Path:
    return Path(str(resources.files("copulse.scorecard").joinpath(DEFAULT_SCORECARD)))


def scorecard_path(settings=None) -> Path:
    configured = getattr(settings, "scorecard_file", None) if settings is not None else None
    return Path(configured) if configured else default_scorecard_path()


def load_scorecard(path: str | Path | None = None, *, settings=None) -> Scorecard:
    """The validated scorecard of ``path`` (default: ``settings.scorecard_file`` or the shipped default)."""
    file = Path(path) if path else scorecard_path(settings)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ScorecardError(str(file), [Issue((), "file not found; fix COPULSE_SCORECARD_FILE or create it "
                                                    "(start from copulse/scorecard/default.yaml)")]) from None
    except OSError as exc:
        raise ScorecardError(str(file), [Issue((), f"cannot read it ({exc.strerror})")]) from None
    return parse_scorecard(text, source=str(file))


def parse_scorecard(text: str, source: str = "<string>") -> Scorecard:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ScorecardError(source, [Issue((), f"not valid YAML ({problem}); check indentation and quoting",
                                            mark.line + 1 if mark else None)]) from None
    if root is None:
        raise ScorecardError(source, [Issue((), "the file is empty; it needs at least 'perspectives:'", 1)])
    issues = _duplicate_keys(root, ())
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        issues.append(Issue((), "the file must be a mapping with 'perspectives:' (and optionally name, version)",
                            root.start_mark.line + 1))
        raise ScorecardError(source, issues)
    issues += [Issue(i.path, i.message, _line(root, i.path)) for i in _name_issues(data)]
    try:
        model = ScorecardModel.model_validate(data)
    except ValidationError as exc:
        issues += [_pydantic_issue(err, root) for err in exc.errors()]
        raise ScorecardError(source, issues) from None
    issues += [Issue(i.path, i.message, _line(root, i.path)) for i in _semantic_issues(model)]
    if issues:
        raise ScorecardError(source, issues)
    return Scorecard(model, source)


def scorecard_from_dict(data: dict, source: str = "<dict>") -> Scorecard:
    """Validate a scorecard given as Python data (tests, tools)."""
    return parse_scorecard(yaml.safe_dump(data, sort_keys=False), source)


_HINTS = {
    "literal_error": "it says which way is better",
    "float_parsing": "write a number, e.g. 0.25 (no units, no % sign)",
    "float_type": "write a number, e.g. 0.25",
    "int_parsing": "write a whole number, e.g. 30",
    "int_type": "write a whole number, e.g. 30",
    "int_from_float": "write a whole number, e.g. 30",
    "greater_than_equal": "use a value >= 0 (0 = shown but not scored)",
    "missing": "add it",
    "extra_forbidden": "remove it or fix its spelling",
    "too_short": "add at least one entry",
    "dict_type": "this must be a mapping (key: value lines indented below it)",
    "string_type": "write a text, quoted if it looks like a number",
}
_FIELDS = {
    "ScorecardModel": "name, version, description, min_perspectives, perspectives",
    "PerspectiveSpec": "label, weight, kpis",
    "KpiSpec": "target, floor, direction, weight, min_sample, per, label, by_granularity",
    "Override": "target, floor, min_sample",
}


def _pydantic_issue(err: dict, root) -> Issue:
    loc = tuple(err["loc"])
    kind = err["type"]
    message = err["msg"]
    if kind == "extra_forbidden":
        # loc of an unknown field: (f), (perspectives, P, f), (..., kpis, K, f), (..., by_granularity, G, f)
        owner = {1: "ScorecardModel", 3: "PerspectiveSpec", 5: "KpiSpec", 7: "Override"}.get(len(loc))
        allowed = _FIELDS.get(owner or "", "")
        guess = difflib.get_close_matches(str(loc[-1]), [f.strip() for f in allowed.split(",")], n=1)
        message = f"unknown field '{loc[-1]}'" + (f" (did you mean '{guess[0]}'?)" if guess else "")
        hint = f"allowed here: {allowed}" if allowed else _HINTS[kind]
    elif kind == "missing":
        hint = f"add '{loc[-1]}:'"
        if loc[-1] == "target":
            hint += " with the value that scores full attainment"
        elif loc[-1] == "weight":
            hint += " with the perspective's relative weight in the index, e.g. 0.25"
    else:
        hint = _HINTS.get(kind, "")
        if "input" in err and kind not in ("too_short",):
            message = f"{message} (got {err['input']!r})"
    return Issue(loc, f"{message}; {hint}" if hint else message, _line(root, loc))


def _name_issues(data: dict) -> list[Issue]:
    """Perspective ids and KPI names, checked on the raw data (reported even when other fields are invalid)."""
    issues: list[Issue] = []
    perspectives = data.get("perspectives")
    if not isinstance(perspectives, dict):
        return issues
    names = list(SCORECARD_KPIS)
    for pname, p in perspectives.items():
        base = ("perspectives", pname)
        if not _ID.match(str(pname)):
            issues.append(Issue(base, "perspective ids are lower-case letters, digits and '_', starting with a letter"))
        kpis = p.get("kpis") if isinstance(p, dict) else None
        for kname in kpis if isinstance(kpis, dict) else ():
            if kname not in SCORECARD_KPIS:
                guess = difflib.get_close_matches(str(kname), names, n=1, cutoff=0.5)
                issues.append(Issue(base + ("kpis", kname), f"unknown KPI '{kname}'"
                                    + (f" (did you mean '{guess[0]}'?)" if guess else "")
                                    + f"; known KPIs: {', '.join(names)}"))
    return issues


def _semantic_issues(model: ScorecardModel) -> list[Issue]:
    issues: list[Issue] = []
    seen: dict[str, str] = {}
    for pname, p in model.perspectives.items():
        base = ("perspectives", pname)
        for kname, spec in p.kpis.items():
            path = base + ("kpis", kname)
            kdef = SCORECARD_KPIS.get(kname)
            if kdef is None:  # reported by _name_issues
                continue
            if kname in seen:
                issues.append(Issue(path, f"KPI '{kname}' is already in perspective '{seen[kname]}'; "
                                          "a KPI may count in one perspective only"))
            seen[kname] = pname
            if spec.per is not None:
                if not kdef.additive:
                    issues.append(Issue(path + ("per",), f"'{kname}' is a ratio and does not grow with the window: "
                                                         "remove 'per'"))
                else:
                    issues += _duration_issue(spec.per, path + ("per",))
            elif kdef.additive and not spec.by_granularity:
                issues.append(Issue(path, f"'{kname}' adds up over the window: say which window the target is for, "
                                          "e.g. 'per: 1h' (scaled to other window sizes), or give by_granularity "
                                          "targets"))
            issues += _bounds_issues(spec.target, spec.floor, spec.direction, path)
            for key, override in spec.by_granularity.items():
                opath = path + ("by_granularity", key)
                bad = _duration_issue(key, opath)
                issues += bad
                if not bad:
                    target = override.target if override.target is not None else spec.target
                    floor = override.floor if override.floor is not None else spec.floor
                    issues += _bounds_issues(target, floor, spec.direction, opath)
        if p.weight > 0 and not any(k.weight > 0 for k in p.kpis.values()):
            issues.append(Issue(base, "every KPI has weight 0, so the perspective can never be scored; "
                                      "give a KPI a weight > 0 or the perspective weight 0"))
    if not any(p.weight > 0 for p in model.perspectives.values()):
        issues.append(Issue(("perspectives",), "every perspective has weight 0; give at least one a weight > 0"))
    scored = sum(1 for p in model.perspectives.values() if p.weight > 0)
    if model.min_perspectives > max(scored, 1):
        issues.append(Issue(("min_perspectives",), f"is {model.min_perspectives} but only {scored} perspective(s) "
                                                   "have a weight > 0; lower it"))
    return issues


def _duration_issue(text: str, path: tuple) -> list[Issue]:
    try:
        duration_seconds(str(text))
    except ValueError as exc:
        return [Issue(path, str(exc))]
    return []


def _bounds_issues(target: float, floor: float | None, direction: str, path: tuple) -> list[Issue]:
    if floor is None:
        if target <= 0:
            return [Issue(path + ("target",), f"target {target:g} needs a 'floor' (the value that scores 0): "
                                              "without one attainment is value / target, which needs a target > 0")]
        return []
    if direction == "higher" and not floor < target:
        return [Issue(path + ("floor",), f"floor {floor:g} must be below target {target:g} when higher is better "
                                         "(the floor scores 0, the target scores 1)")]
    if direction == "lower" and not floor > target:
        return [Issue(path + ("floor",), f"floor {floor:g} must be above target {target:g} when lower is better "
                                         "(the floor is the worst value, scoring 0)")]
    return []


def _duplicate_keys(node, path: tuple) -> list[Issue]:
    issues: list[Issue] = []
    if isinstance(node, yaml.MappingNode):
        first: dict[Any, int] = {}
        for key, value in node.value:
            name = key.value
            if name in first:
                issues.append(Issue(path + (name,), f"duplicate key (first given on line {first[name]}); "
                                                    "YAML would silently keep only the last one: merge them",
                                    key.start_mark.line + 1))
            else:
                first[name] = key.start_mark.line + 1
            issues += _duplicate_keys(value, path + (name,))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            issues += _duplicate_keys(item, path + (i,))
    return issues


def _line(root, path: tuple) -> int | None:
    """1-based line of the deepest node of ``path`` present in the YAML tree (the key's line for mappings)."""
    node, line = root, root.start_mark.line + 1 if root is not None else None
    for part in path:
        if isinstance(node, yaml.MappingNode):
            match = next(((k, v) for k, v in node.value if k.value == str(part)), None)
            if match is None:
                break
            line = match[0].start_mark.line + 1
            node = match[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


# ----------------------------------------------------------------------------------------------- CLI
def add_arguments(parser) -> None:
    parser.add_argument("file", nargs="?", help="scorecard YAML (default: COPULSE_SCORECARD_FILE or the shipped one)")
    parser.add_argument("--granularity", default="1h", help="show the targets in force for this window size (1h)")
    parser.epilog = "exit codes: 0 valid (printed), 2 invalid (every problem listed with its line)"


def run(args, settings) -> int:
    import sys

    from rich.console import Console
    from rich.table import Table

    try:
        card = load_scorecard(args.file, settings=settings)
        granularity = duration_seconds(args.granularity)
    except (ScorecardError, ValueError) as exc:
        print(f"copulse scorecard: {exc}", file=sys.stderr)
        return 2
    console = Console()
    console.print(f"[bold]{card.name}[/bold]  version [bold]{card.version_id}[/bold]  ({card.source})")
    console.print(f"targets for {args.granularity} windows; the index needs {card.min_perspectives} sufficient "
                  "perspective(s)")
    table = Table(show_lines=False)
    for column in ("perspective", "weight", "KPI", "weight ", "direction", "floor", "target", "min sample (of)"):
        table.add_column(column, justify="right" if "weight" in column or column in ("floor", "target") else "left")
    total = sum(p.weight for p in card.targets(granularity)) or 1
    for p in card.targets(granularity):
        ktotal = sum(k.weight for k in p.kpis) or 1
        for i, k in enumerate(p.kpis):
            table.add_row(p.label if i == 0 else "", f"{p.weight / total:.0%}" if i == 0 else "", k.label,
                          f"{k.weight / ktotal:.0%}", k.direction, "—" if k.floor is None else f"{k.floor:g}",
                          f"{k.target:g}", f"{k.min_sample} ({k.sample_column})")
    console.print(table)
    return 0
