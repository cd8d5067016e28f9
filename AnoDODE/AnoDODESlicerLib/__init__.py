"""Slicer-side helpers of the AnoDODE module (imported by ``AnoDODE.py``; may import ``slicer`` and ``vtk``).

Slicer loads every ``.py`` file directly in a module folder as a module, so the helpers live in this package:
``mrml`` (volume, segmentation, table and plot nodes <-> arrays and files), ``child_process`` (runs the
engine worker without blocking), ``dependencies`` (which Python packages are missing; installs them in child
processes), ``panel`` (the panel's texts and numbers) and ``sample_data`` (the Sample Data entry). None of them imports qt, ctk or torch, so the package is tested under the
Qt-free slicer-core wheel. The engine itself is ``AnoDODELib``, which never imports slicer.
"""

from __future__ import annotations

import importlib
import sys

SUBMODULES = (
    "mrml",
    "child_process",
    "dependencies",
    "panel",
    "sample_data",
)  # in reload order: a later one may import an earlier one


def reloadSubmodules() -> list[str]:
    """Re-read this package and its submodules from disk; returns their names, in reload order.

    Slicer's Reload (``slicer.util.reloadScriptedModule``) re-reads only ``AnoDODE.py``; modules it imports
    stay cached in ``sys.modules``, so the widget's ``onReload`` calls this first."""
    importlib.reload(sys.modules[__name__])
    names = []
    for name in SUBMODULES:
        full = f"{__name__}.{name}"
        if full in sys.modules:
            importlib.reload(sys.modules[full])
        else:
            importlib.import_module(full)
        names.append(full)
    return names
