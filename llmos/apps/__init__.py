"""Apps: folders with an `llmos-app.toml` manifest, installed with the capabilities a person
granted them, run as processes with exactly those (docs/APPS.md). `manifest` reads and
checks a manifest; `store` keeps installed apps and their grants; `llmos app` is the UI."""

from __future__ import annotations

from pathlib import Path

SHIPPED = Path(__file__).parent / "shipped"  # example apps that come with llmos
