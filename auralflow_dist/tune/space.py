"""The search space file: which config fields a sweep varies, and how.

A space file (JSON or YAML) maps field names to one distribution each::

    trainer.lr: {loguniform: [1.0e-4, 1.0e-2]}
    model.hidden_channels: {choice: [8, 16, 32]}
    num_fft: {grid: [512, 1024]}            # unqualified: ModelConfig, else TrainerConfig
    data.augment_gain: {choice: [true, false]}

``data.`` names the data-pipeline fields of ``trainer.json``. Everything a user can get wrong is
found here, before any trial starts: unknown or ambiguous fields, unknown distributions, empty or
inverted ranges, and values the config's ``validate()`` rejects with every combination of the
space's other values. Combinations that only some samples hit (``window_size`` above ``num_fft``)
fail their own trial at its start, recorded in the results.
"""

from __future__ import annotations

import difflib
import itertools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml
from ray import tune

from auralflow_dist import storage
from auralflow_dist.config import ModelConfig, TrainerConfig, coerce, leaves, replace
from auralflow_dist.errors import ConfigError

DISTRIBUTIONS = ("choice", "grid", "uniform", "loguniform", "randint")
SECTIONS: dict[str, type] = {"model": ModelConfig, "trainer": TrainerConfig, "data": TrainerConfig}
# Set by the sweep's own flags: one value for every trial.
SWEEP_OWNED = {
    "workers_min": "--workers-per-trial",
    "workers_max": "--workers-per-trial",
    "gpus_per_worker": "--gpus-per-worker",
    "max_epochs": "--max-epochs",
    "storage": "the sweep folder",
}
# Enough to find a valid combination for any realistic space; bigger spaces defer to the trials.
MAX_COMBINATIONS = 4096


@dataclass(frozen=True)
class Param:
    """One swept field: ``section`` is "model" or "trainer"; ``values`` are the choices or bounds."""

    section: str
    field: str
    distribution: str
    values: tuple[Any, ...]

    @property
    def name(self) -> str:
        return f"{self.section}.{self.field}"

    @property
    def candidates(self) -> tuple[Any, ...]:
        """Values to validate: every choice, or both ends of a range."""
        if self.distribution == "randint":
            return (self.values[0], self.values[1] - 1)
        return self.values

    def domain(self, grid: bool) -> Any:
        """The Tune search-space object; ``grid`` turns choices into grid axes."""
        if self.distribution == "grid" or (grid and self.distribution == "choice"):
            return tune.grid_search(list(self.values))
        if self.distribution == "choice":
            return tune.choice(list(self.values))
        make = {"uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint}
        return make[self.distribution](*self.values)


@dataclass(frozen=True)
class Space:
    params: tuple[Param, ...]
    source: str = "space"

    def param_space(self, search: str) -> dict[str, dict[str, Any]]:
        """Tune's ``param_space``: ``{"model": {...}, "trainer": {...}}``."""
        if search == "optuna":
            grids = [p.name for p in self.params if p.distribution == "grid"]
            if grids:
                raise ConfigError(
                    "search",
                    f"optuna cannot search grid entries ({', '.join(grids)} "
                    f"in {self.source}): use choice, or --search grid/random",
                )
        space: dict[str, dict[str, Any]] = {"model": {}, "trainer": {}}
        for p in self.params:
            space[p.section][p.field] = p.domain(grid=search == "grid")
        return space

    def mutations(self) -> dict[str, dict[str, Any]]:
        """PBT's ``hyperparam_mutations``: trainer fields only, as a checkpoint fixes the network."""
        mutable = [p for p in self.params if p.section == "trainer" and p.distribution != "grid"]
        if not mutable:
            raise ConfigError(
                "scheduler",
                f"pbt needs a trainer field to mutate in {self.source} "
                "(e.g. trainer.lr: {loguniform: [1.0e-4, 1.0e-2]})",
            )
        return {
            "trainer": {
                p.field: list(p.values) if p.distribution == "choice" else p.domain(grid=False)
                for p in mutable
            }
        }

    def configs(
        self, sample: Mapping[str, Mapping[str, Any]], model: ModelConfig, trainer: TrainerConfig
    ) -> tuple[ModelConfig, TrainerConfig]:
        """The base configs with one trial's sampled values; raises on an invalid combination."""
        return (_apply(model, sample.get("model", {})), _apply(trainer, sample.get("trainer", {})))

    def flat(self, sample: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
        """``{"model.hidden_channels": 8, ...}`` for tables."""
        return {p.name: _plain(sample.get(p.section, {}).get(p.field)) for p in self.params}

    def to_dict(self) -> dict[str, dict[str, list[Any]]]:
        """The file form, fully qualified (``parse_space`` reads it back)."""
        return {p.name: {p.distribution: list(p.values)} for p in self.params}

    def check(self, model: ModelConfig, trainer: TrainerConfig) -> Space:
        """Every candidate value must pass ``validate()`` with some combination of the others."""
        for section, base in (("model", model), ("trainer", trainer)):
            params = [p for p in self.params if p.section == section]
            for param in params:
                others = [p for p in params if p is not param]
                for value in param.candidates:
                    _check_value(base, param, value, others, self.source)
        return self


def _apply(config: Any, values: Mapping[str, Any]) -> Any:
    return replace(config, **{k: _plain(v) for k, v in values.items()})


def _plain(value: Any) -> Any:
    """Python scalars for numpy ones (Tune samples numpy), so configs and tables stay JSON."""
    return value.item() if hasattr(value, "item") else value


def _check_value(base: Any, param: Param, value: Any, others: list[Param], source: str) -> None:
    combos = itertools.islice(itertools.product(*(p.candidates for p in others)), MAX_COMBINATIONS)
    first: ConfigError | None = None
    for count, combo in enumerate(combos, start=1):
        values = {p.field: v for p, v in zip(others, combo, strict=True)}
        try:
            _apply(base, {**values, param.field: value})
            return
        except ConfigError as err:
            first = first or err
        if count == MAX_COMBINATIONS:
            return  # too many to try: the trials find out
    raise ConfigError(
        param.name,
        f"{value!r} is invalid with every combination of the space's "
        f"other values ({first}) (in {source})",
    )


def _resolve(name: str, source: str) -> tuple[str, str]:
    """``section.field``, or a bare field looked up in ModelConfig, then TrainerConfig."""
    if "." in name:
        section, _, field = name.partition(".")
        if section not in SECTIONS:
            raise ConfigError(
                name, f"unknown section {section!r}: use model., trainer. or data. (in {source})"
            )
        names = list(leaves(SECTIONS[section]))
        if field not in names:
            raise ConfigError(
                name,
                f"unknown {SECTIONS[section].__name__} field{_suggest(field, names)} (in {source})",
            )
        return ("model" if section == "model" else "trainer"), field
    found = [s for s in ("model", "trainer") if name in leaves(SECTIONS[s])]
    if len(found) > 1:
        raise ConfigError(name, f"ambiguous: write model.{name} or trainer.{name} (in {source})")
    if not found:
        names = [n for s in ("model", "trainer") for n in leaves(SECTIONS[s])]
        raise ConfigError(name, f"unknown field{_suggest(name, names)} (in {source})")
    return found[0], name


def _suggest(name: str, names: list[str]) -> str:
    close = difflib.get_close_matches(name, names, n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _coerced(name: str, value: Any, kind: Any, source: str) -> Any:
    """``value`` converted like a JSON config value, the error naming the space file."""
    try:
        return coerce(name, value, kind)
    except ConfigError as err:
        raise ConfigError(name, f"{err.reason} (in {source})") from None


def _param(name: str, spec: Any, source: str) -> Param:
    section, field = _resolve(name, source)
    if field in SWEEP_OWNED:
        raise ConfigError(name, f"set by {SWEEP_OWNED[field]}, not by the space (in {source})")
    if not isinstance(spec, Mapping) or len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
        raise ConfigError(
            name,
            f"expected {{distribution: values}} with one of "
            f"{', '.join(DISTRIBUTIONS)}, got {spec!r} (in {source})",
        )
    ((distribution, values),) = spec.items()
    kind = leaves(SECTIONS[section])[field].kind
    if not isinstance(values, list | tuple) or not values:
        raise ConfigError(name, f"{distribution} needs a non-empty list (in {source})")
    if distribution in ("choice", "grid"):
        coerced = tuple(_coerced(name, v, kind, source) for v in values)
        return Param(section, field, distribution, coerced)
    wanted = int if distribution == "randint" else float
    if kind is not wanted:
        hint = "use randint or choice" if kind is int else "use choice"
        raise ConfigError(
            name,
            f"{distribution} does not fit a {getattr(kind, '__name__', kind)} "
            f"field: {hint} (in {source})",
        )
    if len(values) != 2:
        raise ConfigError(
            name, f"{distribution} needs [low, high], got {list(values)} (in {source})"
        )
    low, high = (_coerced(name, v, wanted, source) for v in values)
    if low >= high:
        raise ConfigError(
            name, f"{distribution} needs low < high, got [{low}, {high}] (in {source})"
        )
    if distribution == "loguniform" and low <= 0:
        raise ConfigError(name, f"loguniform needs low > 0, got {low} (in {source})")
    return Param(section, field, distribution, (low, high))


def parse_space(data: Any, source: str = "space") -> Space:
    """A `Space` from the parsed file; ``source`` names the file in errors."""
    if not isinstance(data, Mapping) or not data:
        raise ConfigError(
            "space",
            f"{source}: expected a mapping of field names to "
            "distributions, e.g. trainer.lr: {loguniform: [1.0e-4, 1.0e-2]}",
        )
    params: list[Param] = []
    for name, spec in data.items():
        param = _param(str(name), spec, source)
        if any(p.name == param.name for p in params):
            raise ConfigError(param.name, f"given twice (as {name!r}) (in {source})")
        params.append(param)
    return Space(tuple(params), source)


def read_space(url: str) -> Space:
    """Read a ``.json``, ``.yaml`` or ``.yml`` space file from any storage URL."""
    lower = url.lower()
    if not lower.endswith((".json", ".yaml", ".yml")):
        raise ConfigError("space", f"{url}: expected a .json, .yaml or .yml file")
    text = storage.read_bytes(url).decode()
    try:
        data = json.loads(text) if lower.endswith(".json") else yaml.safe_load(text)
    except json.JSONDecodeError as err:
        raise ConfigError(
            "space", f"{url}: not valid JSON ({err.msg} at line {err.lineno})"
        ) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError("space", f"{url}: not valid YAML{where}") from None
    return parse_space(data, url)
