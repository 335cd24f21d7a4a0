"""Where an appliance keeps its things: one data directory holds them all."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_DATA_DIR = Path("/var/lib/cairn")


@dataclass(frozen=True)
class Settings:
    data_dir: Path

    @classmethod
    def resolve(cls, data_dir: Path | str | None = None) -> "Settings":
        """--data-dir, else $CAIRN_DATA_DIR, else /var/lib/cairn for root or ~/.local/share/cairn."""
        chosen = data_dir or os.environ.get("CAIRN_DATA_DIR")
        if not chosen:
            chosen = DEFAULT_DATA_DIR if os.geteuid() == 0 else Path.home() / ".local/share/cairn"
        return cls(Path(chosen).expanduser().resolve())

    @property
    def catalog_url(self) -> str:
        return os.environ.get("CAIRN_CATALOG_URL") or f"sqlite:///{self.data_dir / 'catalog.db'}"

    @property
    def store_dir(self) -> Path:
        return Path(os.environ.get("CAIRN_STORE") or self.data_dir / "store")

    @property
    def images_dir(self) -> Path:
        return self.data_dir / "vms"

    @property
    def run_dir(self) -> Path:
        return self.data_dir / "run"

    @property
    def scratch_dir(self) -> Path:
        return self.data_dir / "scratch"

    def ensure(self) -> None:
        for d in (self.data_dir, self.images_dir, self.run_dir, self.scratch_dir):
            d.mkdir(parents=True, exist_ok=True)
