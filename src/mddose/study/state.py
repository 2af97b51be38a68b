"""What a study directory holds of each method: its finished stages and its failure (``status.json``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mddose.utils.fs import atomic_write

STAGES = ("train", "predict", "evaluate")
#: per-patient columns kept for the tables (evaluation columns)
COLUMNS = ("dose_error", "dvh_error", "HI_MDDose_error", "HI_ICRU83")


def read_json(path: Path) -> dict:
    """A JSON object written by the study itself ({} when absent or torn)."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return obj if isinstance(obj, dict) else {}


def write_json(obj: Any, path: Path) -> None:
    """Write ``obj`` as JSON atomically (the folder is created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "w") as fh:
        json.dump(obj, fh, indent=1, default=str)
        fh.write("\n")


@dataclass
class MethodState:
    """What is finished for one method: ``stages[stage]`` = that stage's result dict; ``failed`` = the error."""

    dir: Path
    stages: dict[str, dict]
    failed: dict | None = None

    @classmethod
    def load(cls, d: Path) -> "MethodState":
        st = read_json(d / "status.json")
        return cls(d, dict(st.get("stages", {})), st.get("failed"))

    def save(self) -> None:
        write_json({"stages": self.stages, "failed": self.failed}, self.dir / "status.json")

    def done(self, stage: str) -> bool:
        return stage in self.stages
