"""The configs shipped in the package (``mddose/configs``): training configs and studies, by name.

Light on purpose (no torch): the command line lists them in its help (``mddose train --help``, ``mddose study
--help``) from here, so that the lists never drift from the files.
"""

from __future__ import annotations

from pathlib import Path

#: the package's ``configs`` folder: ``<name>.json`` training configs, ``studies/<name>.json`` studies
CONFIG_ROOT = Path(__file__).resolve().parents[1] / "configs"


def builtin_configs() -> dict[str, Path]:
    """Name → path of every training config shipped in ``mddose/configs``, sorted by name."""
    return {p.stem: p for p in sorted(CONFIG_ROOT.glob("*.json"))}


def builtin_studies() -> dict[str, Path]:
    """Name → path of every study shipped in ``mddose/configs/studies``, sorted by name."""
    return {p.stem: p for p in sorted((CONFIG_ROOT / "studies").glob("*.json"))}
