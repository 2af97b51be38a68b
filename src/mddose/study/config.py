"""A study: which methods, on which patients, under which common budget and evaluation.

A study config is a JSON object (built-in ones: ``mddose/configs/studies/<name>.json``)::

    {"name": "smoke",
     "data": {"phantoms": {"train": 4, "val": 1, "test": 2, "size": 64, "seed": 0}},
        # or {"train": DIR|LIST, "val": DIR|LIST|null, "test": DIR|LIST}  (any supported format)
     "budget": {"minutes": 1},            # or {"steps": 200}: the SAME for every method
     "reference": "MD-Dose",              # display name of the method the others are tested against
     "predict": {"sampler": "ddim", "steps": 10, "samples": 1, "tta": true},
     "methods": [
        {"name": "MD-Dose", "model": "md-dose", "preset": "tiny", "tables": ["table1", "table3"],
         "overrides": {"structure_encoder": "mamba"}, "train": {"batch_size": 8, "slices": {"size": 64}}},
        {"name": "C3D", "model": "c3d", "preset": "tiny", "tables": ["table1"], "train": {"recipe": "c3d"}}]}

``train`` holds :class:`~mddose.train.config.TrainConfig` fields except those the study decides itself
(``model``, ``preset``, ``model_overrides``, ``data``, ``max_steps``, ``time_budget_s``). Every method sees
the same patients, the same ROI channels (the defaults of the data: OpenKBP's, or the phantoms') and the
same budget. ``predict`` options are given to each model that takes them (sampler/steps/samples for the 2D
diffusion models, tta for the 3D ones).

Everything is validated before any work: unknown keys, models, presets and structure encoders; overlapping
train/val and test patients (named); a reference that is not a method.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mddose.errors import MddoseError
from mddose.utils.builtin import builtin_studies  # noqa: F401  (also this module's name for it)
from mddose.utils.config import check_finite, check_keys, check_number, dataclass_from_dict, read_json_object

TABLES = ("table1", "table3")
#: TrainConfig fields a study sets itself (a method's "train" section may not)
STUDY_OWNED = ("model", "preset", "model_overrides", "data", "max_steps", "time_budget_s")


@dataclass(frozen=True)
class MethodSpec:
    """One compared method: a registered model + preset + overrides + training settings, with a display name; or
    an existing ``checkpoint`` (a path or a shipped name, e.g. ``"prior-dose"``) that is only predicted."""

    name: str
    model: str = ""
    checkpoint: str | None = None
    preset: str | None = "small"
    overrides: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    tables: tuple[str, ...] = ("table1",)

    @property
    def trained(self) -> bool:
        """Whether the study trains this method (False: it predicts with its ``checkpoint``)."""
        return self.checkpoint is None

    @property
    def slug(self) -> str:
        """A file-name-safe form of the name (the method's folder in the study directory)."""
        return re.sub(r"[^A-Za-z0-9._-]+", "_", self.name).strip("._") or "method"


@dataclass(frozen=True)
class StudyData:
    """``train`` / ``val`` / ``test``: patient folders or list files; or ``phantoms``: a
    :class:`~mddose.data.sources.PhantomSplit` as written (``seed``: the study's when left out;
    :meth:`StudyConfig.phantom_split`)."""

    train: str | tuple[str, ...] | None = None
    val: str | tuple[str, ...] | None = None
    test: str | None = None
    phantoms: dict[str, int] | None = None


@dataclass(frozen=True)
class StudyConfig:
    """A whole study (see the module docstring)."""

    name: str
    methods: tuple[MethodSpec, ...]
    data: StudyData
    reference: str
    budget: dict[str, float]
    predict: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def phantom_split(self, where: str = "study config"):
        """The :class:`~mddose.data.sources.PhantomSplit` of ``data.phantoms`` (its seed: the study's when the
        split names none); None for patient folders."""
        from mddose.data.sources import PhantomSplit
        if self.data.phantoms is None:
            return None
        return PhantomSplit.from_dict({"seed": self.seed, **self.data.phantoms}, where)

    @property
    def budget_minutes(self) -> float | None:
        return self.budget.get("minutes")

    @property
    def budget_steps(self) -> int | None:
        return self.budget.get("steps")

    def method(self, name: str) -> MethodSpec:
        for m in self.methods:
            if m.name == name:
                return m
        raise MddoseError(f"study {self.name}: no method named {name!r}; methods: "
                          f"{', '.join(m.name for m in self.methods)}")

    def with_budget_minutes(self, minutes: float) -> "StudyConfig":
        check_number("", "--budget-minutes", minutes, above=0)
        return dataclasses.replace(self, budget={"minutes": float(minutes)})


# ------------------------------------------------------------------------------------------ parsing
#: characters a method name may not hold: they would break the Markdown/CSV tables or the HTML report
_NAME_BREAKERS = re.compile(r"[|<>\\\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _check_name(where: str, key: str, v: Any) -> None:
    """A method name: a non-empty string without table-breaking characters or surrounding blanks."""
    if not isinstance(v, str) or not v.strip():
        raise MddoseError(f"{where}: {key} must be a non-empty string, got {v!r}")
    bad = _NAME_BREAKERS.search(v)
    if bad or v != v.strip():
        what = repr(bad.group()) if bad else "leading/trailing blanks"
        raise MddoseError(f"{where}: {key} {v!r} may not contain {what} (it would break the tables and the report)")


def _check_strings(where: str, d: dict, prefix: str, keys: tuple[str, ...], optional: tuple[str, ...] = ()) -> None:
    """Each of ``keys`` present in ``d`` is a string (``optional``: or null); else one line naming the key."""
    for k in keys:
        if k in d and not (isinstance(d[k], str) or (d[k] is None and k in optional)):
            raise MddoseError(f"{where}: {prefix}{k} must be a string, got {d[k]!r}")


def _method(d: Any, where: str, i: int) -> MethodSpec:
    if isinstance(d, dict):
        _check_name(where, f"methods[{i}].name", d.get("name"))
        _check_strings(where, d, f"methods[{i}].", ("model", "preset"), optional=("preset",))
        tables = d.get("tables", [])
        if not isinstance(tables, list) or not all(isinstance(t, str) for t in tables):
            raise MddoseError(f"{where}: methods[{i}].tables must be a list of table names, got {tables!r}")
    m = dataclass_from_dict(MethodSpec, d, where, prefix=f"methods[{i}].")
    if not isinstance(m.model, str) or (m.checkpoint is not None and not isinstance(m.checkpoint, str)):
        raise MddoseError(f"{where}: methods[{i}].model and .checkpoint must be strings")
    if bool(m.model) == (m.checkpoint is not None):
        raise MddoseError(f"{where}: methods[{i}] needs either 'model' (trained by the study) or 'checkpoint' "
                          "(predicted only), not both")
    if m.checkpoint is not None and (m.train or m.overrides):
        raise MddoseError(f"{where}: methods[{i}] predicts with checkpoint {m.checkpoint!r}: it takes no 'train' "
                          "or 'overrides'")
    for key in ("overrides", "train"):
        if not isinstance(getattr(m, key), dict):
            raise MddoseError(f"{where}: methods[{i}].{key} must be an object")
    bad = sorted(set(m.train) & set(STUDY_OWNED))
    if bad:
        raise MddoseError(f"{where}: methods[{i}].train may not set {', '.join(bad)} (the study sets them)")
    unknown = sorted(set(m.tables) - set(TABLES))
    if unknown:
        raise MddoseError(f"{where}: methods[{i}].tables: unknown {', '.join(unknown)}; choose from {', '.join(TABLES)}")
    return m


def _check_data_section(where: str, data: Any) -> None:
    """``data``: an object whose train/val are a path or a non-empty list of paths, test a path, phantoms an
    object (its values are checked by :class:`~mddose.data.sources.PhantomSplit`)."""
    if not isinstance(data, dict):
        raise MddoseError(f"{where}: data must be a JSON object, got {data!r}")
    for k in ("train", "val"):
        v = data.get(k)
        ok = v is None or (isinstance(v, str) and v) or (isinstance(v, list) and v
                                                         and all(isinstance(x, str) and x for x in v))
        if not ok:
            raise MddoseError(f"{where}: data.{k} must be a path or a non-empty list of paths, got {v!r}")
    if data.get("test") is not None and not (isinstance(data["test"], str) and data["test"]):
        raise MddoseError(f"{where}: data.test must be a path, got {data['test']!r}")
    if data.get("phantoms") is not None and not isinstance(data["phantoms"], dict):
        raise MddoseError(f"{where}: data.phantoms must be a JSON object, got {data['phantoms']!r}")


def _check_models(cfg: StudyConfig, where: str) -> None:
    """Every method's model, preset, overrides and training settings must build (nothing is trained)."""
    from mddose.models import make_config
    from mddose.train.config import TrainConfig

    from mddose.predict.shipped import resolve_checkpoint
    from mddose.train.checkpoint import read_checkpoint_config

    for m in cfg.methods:
        if not m.trained:
            try:
                read_checkpoint_config(resolve_checkpoint(m.checkpoint))
            except MddoseError as exc:
                raise MddoseError(f"{where}: method {m.name!r}: {exc}") from None
            continue
        try:
            make_config(m.model, m.preset, **{"in_channels": 9, **m.overrides})
            TrainConfig.from_dict({**m.train, "model": m.model, "preset": m.preset, "model_overrides": dict(m.overrides)},
                                  where=f"{where} method {m.name!r} train").resolved()
        except MddoseError as exc:
            raise MddoseError(f"{where}: method {m.name!r}: {exc}") from None


def study_from_dict(raw: dict, where: str = "study config") -> StudyConfig:
    """Parse and validate a study config (see the module docstring); one-line MddoseError on any problem."""
    check_keys(raw, [f.name for f in dataclasses.fields(StudyConfig)], where)
    check_finite(raw, where)
    for key in ("name", "methods", "data", "reference", "budget"):
        if key not in raw:
            raise MddoseError(f"{where}: missing '{key}'")
    _check_strings(where, raw, "", ("name", "reference", "description"))
    if not raw["name"].strip():
        raise MddoseError(f"{where}: name must be a non-empty string")
    if "seed" in raw:
        check_number(where, "seed", raw["seed"], integer=True)
    _check_data_section(where, raw["data"])
    if not isinstance(raw["methods"], list) or not raw["methods"]:
        raise MddoseError(f"{where}: 'methods' must be a non-empty list")
    methods = tuple(_method(d, where, i) for i, d in enumerate(raw["methods"]))
    names = [m.name for m in methods]
    commas = [n for n in names if "," in n]
    if commas:
        raise MddoseError(f"{where}: method names may not contain commas (--only separates names with them): "
                          f"{commas[0]!r}")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise MddoseError(f"{where}: method names must be unique, repeated: {', '.join(dup)}")
    slugs = [m.slug for m in methods]
    if len(set(slugs)) != len(slugs):
        raise MddoseError(f"{where}: method names map to the same folder name: {', '.join(slugs)}")
    data = dataclass_from_dict(StudyData, raw["data"], where, prefix="data.")
    if (data.phantoms is None) == (data.train is None):
        raise MddoseError(f"{where}: data needs either 'phantoms' or 'train' + 'test'")
    if data.train is not None and data.test is None:
        raise MddoseError(f"{where}: data.test (the test patients) is missing")
    if data.phantoms is not None:
        from mddose.data.sources import PhantomSplit
        PhantomSplit.from_dict({"seed": raw.get("seed", 0), **data.phantoms}, where)
    budget = raw["budget"]
    if not isinstance(budget, dict) or len(budget) != 1 or next(iter(budget)) not in ("minutes", "steps"):
        raise MddoseError(f"{where}: budget must be {{\"minutes\": M}} or {{\"steps\": N}} (one, the same for all)")
    key, value = next(iter(budget.items()))
    check_number(where, f"budget.{key}", value, integer=key == "steps", above=0)
    predict = raw.get("predict", {})
    if not isinstance(predict, dict):
        raise MddoseError(f"{where}: predict must be an object")
    from mddose.kinds import all_kinds
    check_keys(predict, [k for kind in all_kinds().values() for k in kind.options], where, "predict.")
    for k, v in predict.items():                 # each value as every kind that takes it checks it
        for kind in all_kinds().values():
            if k in kind.options:
                kind.check_option(k, v, f"{where}: predict.{k}")
    cfg = StudyConfig(name=raw["name"], methods=methods, data=data, reference=raw["reference"],
                      budget=dict(budget), predict=dict(predict), seed=raw.get("seed", 0),
                      description=raw.get("description", ""))
    if cfg.reference not in names:
        raise MddoseError(f"{where}: reference {cfg.reference!r} is not one of the methods ({', '.join(names)})")
    _check_models(cfg, where)
    return cfg


def _resolve_paths(cfg: StudyConfig, base: Path) -> StudyConfig:
    """Relative data paths: against the current directory first, then the config file's folder; made absolute
    (the saved config names the same patients wherever the study is re-run from)."""
    def resolve(v: str) -> str:
        use_base = not Path(v).is_absolute() and not Path(v).exists() and (base / v).exists()
        return os.path.abspath(base / v if use_base else v)

    fixed = {}
    for key in ("train", "val", "test"):
        v = getattr(cfg.data, key)
        new = tuple(map(resolve, v)) if isinstance(v, tuple) else (resolve(v) if v else v)
        if new != v:
            fixed[key] = new
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, **fixed)) if fixed else cfg


def load_study_config(name_or_path: str | os.PathLike) -> StudyConfig:
    """A built-in study by name (:func:`~mddose.utils.builtin.builtin_studies`) or a JSON file."""
    p = Path(name_or_path)
    builtin = builtin_studies()
    if not p.exists() and str(name_or_path) in builtin:
        p = builtin[str(name_or_path)]
    elif not p.exists():
        raise MddoseError(f"--config: no study file or built-in study named {str(name_or_path)!r} "
                          f"(built-in: {', '.join(builtin)})")
    return _resolve_paths(study_from_dict(read_json_object(p, "study config"), where=str(p)), p.parent)
