"""serve_config.yaml: a valid Serve config whose import path builds the loraq application,
and deploys the way Serve deploys a config file (the KubeRay RayService runs the same
application, see tests/integration/test_deploy_files.py)."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import yaml
from ray import serve
from ray._common.utils import import_attr
from ray.serve import Application
from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
from ray.serve.schema import ServeApplicationSchema, ServeDeploySchema

from demo.tasks import expected_output
from producer import Producer
from tests.conftest import REPO
from tests.integration.serve.conftest import (
    MAX_NEW_TOKENS,
    MODELS,
    delete_prefix,
    prompts_right_on_every_model,
)
from workers.app import MODEL_DEPLOYMENT
from workers.settings import WorkerSettings

# Serve application name and route prefix of the deployed config, apart from other tests'.
APP_NAME = "serveconfig"


def repo_serve_app() -> ServeApplicationSchema:
    raw = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    [app] = ServeDeploySchema.model_validate(raw).applications
    return app


def test_serve_config_is_valid_and_builds_the_app_from_its_args() -> None:
    app = repo_serve_app()
    # Settings ignore unknown names, so a misspelt arg would silently do nothing.
    unknown = set(app.args) - set(WorkerSettings.model_fields)
    assert not unknown, f"serve_config.yaml args that are no setting: {unknown}"
    module_name, _, function_name = app.import_path.partition(":")
    builder = getattr(importlib.import_module(module_name), function_name)
    assert isinstance(builder(dict(app.args)), Application)


@pytest.fixture
def config_app(ray_serve: str, redis_url: str, prefix: str) -> Iterator[dict[str, Any]]:
    """serve_config.yaml's application, built as Serve's controller builds a config's
    (import the path, call the builder with the args), with this test's Redis and prefix."""
    app = repo_serve_app()
    args = {**app.args, "redis_url": redis_url, "prefix": prefix, "app_name": APP_NAME}
    built = call_user_app_builder_with_args_if_necessary(import_attr(app.import_path), args)
    serve.run(built, name=APP_NAME, route_prefix=f"/{APP_NAME}")
    yield args
    serve.delete(APP_NAME)
    delete_prefix(redis_url, prefix)


@pytest.mark.timeout(300)
def test_serve_config_deploys_and_serves_every_demo_model(
    config_app: dict[str, Any], ray_serve: str
) -> None:
    handle = serve.get_deployment_handle(MODEL_DEPLOYMENT, app_name=APP_NAME)
    [text, *_] = prompts_right_on_every_model(handle, size=4)
    producer = Producer.from_settings(WorkerSettings(**config_app))
    ids = {
        model: producer.submit(text, adapter=model, params={"max_new_tokens": MAX_NEW_TOKENS})
        for model in MODELS
    }
    for model, job_id in ids.items():
        record = producer.wait(job_id, timeout=120)
        assert record.result is not None, record
        assert record.result.text == expected_output(model, text)
    health = requests.get(f"{ray_serve}/{APP_NAME}/healthz", timeout=10)
    assert health.status_code == 200
