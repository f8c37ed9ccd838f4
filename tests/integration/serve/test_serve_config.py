"""serve_config.yaml: a valid Serve config whose import path builds the loraq application."""

from __future__ import annotations

import importlib

import yaml
from ray.serve import Application
from ray.serve.schema import ServeDeploySchema

from tests.conftest import REPO
from workers.settings import WorkerSettings


def test_serve_config_is_valid_and_builds_the_app_from_its_args() -> None:
    raw = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    [app] = ServeDeploySchema.model_validate(raw).applications
    # Settings ignore unknown names, so a misspelt arg would silently do nothing.
    unknown = set(app.args) - set(WorkerSettings.model_fields)
    assert not unknown, f"serve_config.yaml args that are no setting: {unknown}"
    module_name, _, function_name = app.import_path.partition(":")
    builder = getattr(importlib.import_module(module_name), function_name)
    assert isinstance(builder(dict(app.args)), Application)
