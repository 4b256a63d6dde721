"""Property-based fuzzing (schemathesis) of the trainer, the sampler and the control plane.

Each server's OpenAPI document is generated from the shared wire models, so
schemathesis can build valid and invalid bodies from it. For every generated
request: no 5xx, an answer within the timeout, a status, content type and body
the document declares, and every refusal a 4xx whose message names the field.
Trainer refusals aimed at a primed run leave its weights, step and gradient
buffer bit-identical.

Budget: ``FUZZ_EXAMPLES`` per operation and mode (set LOOPS_FUZZ_EXAMPLES to go
deeper locally); the whole module stays well under two minutes on 2 cores.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import httpx
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from tests.reliability.conftest import API_KEY, assert_same_state, trainer_state
from tests.trainer.trainer_helpers import Trainer

FUZZ_EXAMPLES = int(os.environ.get("LOOPS_FUZZ_EXAMPLES", "12"))
REQUEST_TIMEOUT_S = 30.0  # "no hang": every answer, refusal or not, comes within this
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, negative_data_rejection]
SETTINGS = settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True,
                    database=None, suppress_health_check=list(HealthCheck))

# Routes whose valid requests would start real work far beyond a fuzz budget
# (provisioning trainer processes) are fuzzed with invalid bodies only.
PROVISIONING = ("/trainers", "/runs", "/samplers")


def _load(url: str, headers: dict[str, str] | None = None) -> Any:
    return schemathesis.openapi.from_url(f"{url}/openapi.json", headers=headers or {},
                                         timeout=REQUEST_TIMEOUT_S)


def refusal_names_a_field(case: Any, response: Any, headers: dict[str, str] | None) -> None:
    """A 422/400 says which field (body key, header, parameter) was wrong and why."""
    if response.status_code not in (400, 422):
        return
    body = response.json()
    message = body.get("detail") or body.get("error", {}).get("message", "")
    names = {"body", "JSON", *(headers or {}), *(case.headers or {}), *(case.query or {}),
             *(case.path_parameters or {}), *_field_names(case.operation.schema.raw_schema)}
    if isinstance(case.body, dict):
        names.update(case.body)
    assert any(name in message for name in names), (
        f"refusal does not name the field: {message!r} (request names: {sorted(names)})")


def _field_names(document: dict[str, Any]) -> set[str]:
    """Every property name the document's component schemas declare."""
    return {name for component in document.get("components", {}).get("schemas", {}).values()
            for name in component.get("properties", {})}


def fuzz(schema: Any, send: Callable[[Any, GenerationMode], None],
         positive: Callable[[Any], bool] = lambda operation: True) -> None:
    """Run ``send`` on generated cases of every operation, valid and invalid ones.

    Failures are collected per operation and mode, so one run reports them all.
    An operation whose parameters are all free strings has no invalid input.
    """
    failures: list[str] = []
    operations = 0
    sent: list[str] = []

    def counted(case: Any, mode: GenerationMode) -> None:
        sent.append(case.operation.label)
        send(case, mode)

    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        modes = [GenerationMode.NEGATIVE]
        if positive(operation):
            modes.insert(0, GenerationMode.POSITIVE)
        for mode in modes:
            try:
                _fuzz_operation(operation, mode, counted)
            except Unsatisfiable:
                assert mode is GenerationMode.NEGATIVE, operation.label
            except Exception as exc:  # collected; reported together below
                failures.append(f"{operation.label} [{mode.value}]: {exc}"[:3000])
    assert operations >= 5
    assert len(set(sent)) == operations, "every operation got requests"
    assert not failures, "\n\n".join(failures)


def _fuzz_operation(operation: Any, mode: GenerationMode,
                    send: Callable[[Any, GenerationMode], None]) -> None:
    @SETTINGS
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        send(case, mode)

    run()


def call(case: Any, headers: dict[str, str] | None = None) -> Any:
    response = case.call(timeout=REQUEST_TIMEOUT_S, headers=headers)
    case.validate_response(response, checks=CHECKS, headers=headers)
    refusal_names_a_field(case, response, headers)
    return response


def test_trainer_fuzz(trainer_server, guarded_run, run_id: str) -> None:
    """Invalid input goes to the guarded run, which must stay bit-identical.

    Valid input goes to a scratch run, where accepted operations may change it.
    """
    scratch = Trainer(trainer_server.url, run_id)
    scratch.init(rank=2, seed=1)
    before = trainer_state(guarded_run)

    def send(case: Any, mode: GenerationMode) -> None:
        target = guarded_run if mode is GenerationMode.NEGATIVE else scratch
        headers = {"X-Run-Id": target.run_id}
        if case.path.startswith("/operations/"):
            headers = {}  # random ids are unknown: 404 at once, never a held poll
        if case.path_parameters and "run_id" in case.path_parameters:
            case.path_parameters["run_id"] = target.run_id
        call(case, headers)

    fuzz(_load(trainer_server.url), send)
    assert_same_state(before, trainer_state(guarded_run))


def test_sampler_fuzz(sampler_server) -> None:
    fuzz(_load(sampler_server.url), lambda case, _mode: call(case))


def test_control_plane_fuzz(keyed_control_plane) -> None:
    headers = keyed_control_plane.headers()

    def provisions(operation: Any) -> bool:
        return operation.method.upper() == "POST" and operation.path.endswith(PROVISIONING)

    fuzz(_load(keyed_control_plane.url, headers), lambda case, _mode: call(case, headers),
         positive=lambda operation: not provisions(operation))


def test_wrong_method_on_a_known_route_is_405(trainer_server, sampler_server,
                                              keyed_control_plane) -> None:
    """405 with Allow for a known path; a path a server does not offer is 501 on the
    trainer (whose SDK retries 404s) and an OpenAI-style 404 on the sampler."""
    cases = [(trainer_server.url, "/forward_backward", "PUT", {}),
             (sampler_server.url, "/sample", "GET", {}),
             (keyed_control_plane.url, "/v1/loops/sessions", "GET",
              keyed_control_plane.headers())]
    for url, path, method, headers in cases:
        response = httpx.request(method, url + path, headers=headers, timeout=30)
        assert response.status_code == 405, (url, path, response.text)
        assert "POST" in response.headers["Allow"]
    assert httpx.post(f"{trainer_server.url}/no_such_feature", timeout=30).status_code == 501
    assert httpx.post(f"{sampler_server.url}/no_such_feature", timeout=30).status_code == 404


def test_control_plane_serves_its_openapi_document_behind_its_key(keyed_control_plane) -> None:
    url = f"{keyed_control_plane.url}/openapi.json"
    assert httpx.get(url, timeout=30).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Api-Key wrong"},
                     timeout=30).status_code == 401
    document = httpx.get(url, headers={"Authorization": f"Api-Key {API_KEY}"}, timeout=30).json()
    body = document["paths"]["/v1/loops/trainers"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"]["$ref"].endswith(
        "/CreateTrainerRequest")
    assert "lora_rank" in document["components"]["schemas"]["CreateTrainerRequest"]["properties"]
    assert "HTTPValidationError" not in document["components"]["schemas"]
