"""Where patients come from for batch work: folders and list files, or the phantom split.

* :func:`list_patients` — patient folders of a folder, a folder of folders, a list file, or a list of those;
* :func:`load_each` — load them one by one, skipping (and reporting) the ones that fail;
* :class:`PhantomSplit` — the one spec of synthetic train / validation / test phantoms (``data.phantoms`` of a
  train config or a study, the demo's), and the one rule of their seeds: training phantoms from ``seed``, then the
  validation ones, then the test ones, so that the three never share a phantom.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mddose.errors import MddoseError
from mddose.utils.batch import skip_item
from mddose.utils.config import check_number, dataclass_from_dict, human_bytes, physical_memory
from mddose.utils.fs import describe_error

#: bytes per voxel of a phantom in memory: CT and dose float32, 7 ROI masks and the possible-dose mask (bool)
PHANTOM_BYTES_PER_VOXEL = 16


@dataclass(frozen=True)
class PhantomSplit:
    """``train`` training, ``val`` validation and ``test`` test phantoms of ``size``² slices from ``seed``.

    JSON: ``{"train": 8, "val": 2, "test": 2, "size": 64, "seed": 0}`` (``"n"``: the older spelling of
    ``"train"``). Phantom ``i`` of the split is ``make_phantom(seed + i)``, counted train → val → test.
    """

    train: int = 8
    val: int = 2
    test: int = 2
    size: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        for key, low in (("train", 1), ("val", 0), ("test", 0), ("size", 32), ("seed", 0)):
            check_number("phantoms", key, getattr(self, key), integer=True, at_least=low)
        need = (self.train + self.val) * PHANTOM_BYTES_PER_VOXEL * self.size ** 3 // 2     # (S/2, S, S) each
        if need > physical_memory() // 4:          # generated in memory: refused at once, not after minutes
            key = "size" if need // (self.train + self.val) > physical_memory() // 4 else "train"
            raise MddoseError(f"phantoms: {key} {getattr(self, key)}: {self.train + self.val} phantoms of size "
                              f"{self.size} need {human_bytes(need)} of memory, over a quarter of this machine's "
                              f"{human_bytes(physical_memory())}")

    def seeds(self, part: str) -> range:
        """The phantom seeds of ``part`` (``"train"``, ``"val"`` or ``"test"``)."""
        start = {"train": 0, "val": self.train, "test": self.train + self.val}[part]
        return range(self.seed + start, self.seed + start + getattr(self, part))

    def phantoms(self, part: str) -> list:
        """The :class:`~mddose.data.patient.Patient` phantoms of ``part`` (ids ``pt_1`` … in test order)."""
        from mddose.data.phantom import make_phantom

        return [make_phantom(s, self.size) for s in self.seeds(part)]

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Any, where: str, prefix: str = "data.phantoms.") -> "PhantomSplit":
        """From a JSON object (``"n"`` read as ``"train"``); unknown keys or bad values → one line naming
        ``where``."""
        if isinstance(d, cls):
            return d
        spelled = "train"
        if isinstance(d, dict) and "n" in d:
            if "train" in d:
                raise MddoseError(f"{where}: {prefix}n and {prefix}train say the same thing; keep 'train'")
            d, spelled = {("train" if k == "n" else k): v for k, v in d.items()}, "n"
        try:
            return dataclass_from_dict(cls, d, where, prefix=prefix)
        except MddoseError as exc:         # named as the file and the key were written
            msg = str(exc)
            if msg.startswith("phantoms: "):
                msg = f"{where}: {prefix}{msg[len('phantoms: '):]}"
            raise MddoseError(msg.replace(f"{prefix}train ", f"{prefix}{spelled} ")) from None


def list_patients(spec: str | tuple[str, ...] | list[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """(patient folders, skipped) of a patient folder, a folder of patient folders, a text file of paths
    (one per line, relative to the file; ``#`` comments), or a list of those (concatenated in order).
    A listed path that does not exist is skipped."""
    from mddose.data.io import patient_dirs

    if isinstance(spec, (list, tuple)):
        folders: list[Path] = []
        skipped: list[tuple[str, str]] = []
        for one in spec:
            f, s = list_patients(one)
            folders += f
            skipped += s
        return folders, skipped
    p = Path(spec)
    if p.is_file():
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise MddoseError(f"cannot read the patient list ({describe_error(exc)})", p) from None
        lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
        out = [(p.parent / ln) if not Path(ln).is_absolute() else Path(ln) for ln in lines]
        if not out:
            raise MddoseError("the patient list names no patients", p)
        good = [x for x in out if x.exists()]
        return good, [skip_item(x, MddoseError(f"listed in {p} but not found", x)) for x in out if not x.exists()]
    if not p.exists():
        raise MddoseError("training data not found (expected a patient directory, a directory of "
                          "patient directories or a list file)", p)
    return patient_dirs(p), []


def load_each(items: list, what: str) -> tuple[list, list[tuple[str, str]]]:
    """(loaded Patients with a dose, skipped) — every item loaded on its own; a failure skips that item only."""
    from mddose.data.io import load_patient

    loaded, skipped = [], []
    for item in items:
        try:
            patient = load_patient(item)
            if patient.dose is None:
                raise MddoseError(f"has no dose (needed for {what})", item)
            loaded.append(patient)
        except Exception as exc:  # noqa: BLE001 - any failure of one patient: report it and go on
            skipped.append(skip_item(item, exc))
    return loaded, skipped


def training_sources(data) -> tuple[list, list, bool, list[tuple[str, str]]]:
    """(training sources, validation patients, phantoms?, skipped) of a train config's ``data`` section: patient
    folders (loaded later, by the dataset) and loaded validation patients, or the phantom split's phantoms."""
    if data.train is None and data.phantoms is None:
        raise MddoseError("train config: data needs 'train' (patients) or 'phantoms'")
    if data.train is None:
        return data.phantoms.phantoms("train"), data.phantoms.phantoms("val"), True, []
    train_src, skipped = list_patients(data.train)
    val_p: list = []
    if data.val:
        val_items, val_skipped = list_patients(data.val)
        val_p, more = load_each(val_items, "validation")
        skipped += val_skipped + more
    return train_src, val_p, False, skipped
