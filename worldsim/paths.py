"""The repository's own files from any working directory.

The player, the kiosk and the tools name what ships by repository-relative paths
(``assets/default.safetensors``, ``configs/kiosk.yaml``). From the clone they are found as given; a booth
whose service starts ``python /opt/worldsim/play.py --kiosk`` in ``/`` finds them in the clone the package
is imported from, instead of playing without its kiosk config or reporting that no model ships.

Boundary: paths only; nothing is opened.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent  # the clone: worldsim/ sits at its root


def repo_file(path: str | Path) -> Path:
    """``path`` as given when it exists (or is absolute), else the same relative path in the clone when
    that exists there, else ``path`` unchanged (so a missing file is reported by the name it was given)."""
    p = Path(path)
    if p.is_absolute() or p.exists():
        return p
    in_repo = REPO / p
    return in_repo if in_repo.exists() else p
