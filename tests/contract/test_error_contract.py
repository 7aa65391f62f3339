"""One error contract: every error has a reason, every reason a gRPC status; the public names."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import grpc
import pytest

import mesh
from mesh.errors import MeshError, Reason, all_error_classes


def _import_everything() -> None:
    for info in pkgutil.walk_packages(mesh.__path__, "mesh."):
        if ".v1." in info.name or info.name.endswith("__main__"):
            continue
        importlib.import_module(info.name)


def test_every_error_class_has_a_reason_of_its_own_family() -> None:
    _import_everything()
    classes = all_error_classes()
    assert len(classes) > 30
    for cls in classes:
        assert isinstance(cls.reason, Reason), cls
        if cls is not MeshError:
            assert cls.reason is not Reason.MESH_ERROR, f"{cls.__module__}.{cls.__name__}"


def test_every_reason_has_a_status_code() -> None:
    for reason in Reason:
        assert isinstance(reason.status, grpc.StatusCode)
        assert reason.value == reason.name
    refusals = [r for r in Reason if r.status in (grpc.StatusCode.UNAUTHENTICATED,
                                                  grpc.StatusCode.PERMISSION_DENIED)]
    assert Reason.TOKEN_EXPIRED in refusals and Reason.POLICY_INVALID not in refusals


def test_the_top_level_package_exports_what_a_service_author_needs() -> None:
    exported = set(mesh.__all__)
    assert exported == set(mesh._EXPORTS)
    for name in exported:
        assert getattr(mesh, name) is not None
    assert {"Workload", "current_call", "require_user", "load_policy"} <= exported
    with pytest.raises(AttributeError):
        mesh.NoSuchThing  # type: ignore[attr-defined]  # noqa: B018


def test_mesh_token_does_not_import_the_demo() -> None:
    code = ("import sys\nfrom mesh.cli import main\ntry:\n    main(['token', 'inspect', 'a.b.c'])"
            "\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules\n"
            "             if m.startswith(('mesh.demo', 'ca.')) or m == 'ca'))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=False, timeout=60)
    assert run.stdout.strip().splitlines()[-1] == "[]", run.stdout + run.stderr


def test_mesh_never_imports_ca() -> None:
    code = ("import sys, importlib, pkgutil, mesh\n"
            "for i in pkgutil.walk_packages(mesh.__path__, 'mesh.'):\n"
            "    if '.v1.' in i.name or i.name.endswith('__main__'): continue\n"
            "    importlib.import_module(i.name)\n"
            "print(sorted(m for m in sys.modules if m == 'ca' or m.startswith('ca.')))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=False, timeout=120)
    assert run.stdout.strip().splitlines()[-1] == "[]", run.stdout + run.stderr
