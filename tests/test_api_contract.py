"""The API keeps its published contract (/api/v1/openapi.json), checked by schemathesis over every
operation, as anonymous, viewer, operator and admin: no server error, no answer that breaks its
schema or that the OpenAPI does not declare (its status, content type, headers), timestamps with
a zone (date-time), requests that break the schema refused and, as far as a schema can say what
is valid, requests that keep it accepted.

Each operation gets EXAMPLES cases that keep its schema and EXAMPLES that break it, per role
($CAIRN_CONTRACT_EXAMPLES, 6 by default: about 1,700 cases per role, 6,500 in all, in under two
minutes on 2 cores; the seed is printed and $CAIRN_CONTRACT_SEED replays a run). The app
runs against a real catalog and store with a small world of real VMs, backups and jobs
(contract_helpers.World); path parameters name the world's VMs, backups and jobs half the
time, so operations act on real state and the state one case leaves is what the next one
meets, not only on names that are not there.
"""
from __future__ import annotations

import os
import random
from collections import Counter
from typing import Any

import pytest
import schemathesis
from contract_helpers import ROLES, World, build_world
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.config._checks import NotAServerErrorConfig
from schemathesis.specs.openapi.checks import positive_data_acceptance

from appliance.context import Appliance

EXAMPLES = int(os.environ.get("CAIRN_CONTRACT_EXAMPLES", "6"))
SEED = int(os.environ.get("CAIRN_CONTRACT_SEED", str(random.randrange(1 << 32))))
# Whatever a body asks a route to wait for (a stop's grace, a boot test), the run waits at most this.
MAX_WAIT = 2.0
# 502 and 503 say another server failed (a host that does not answer, a receiver), never ours:
# the run's made-up hosts and receivers cannot answer. Only when the operation declares them.
OTHER_SERVERS = ["2xx", "3xx", "4xx", "502", "503"]
STREAM = "/api/v1/events/stream"


@pytest.fixture
def world(appliance: Appliance) -> World:
    return build_world(appliance)


def contract_schema(world: World, role: str) -> Any:
    schema = schemathesis.openapi.from_asgi("/api/v1/openapi.json", world.app)
    schema.config.checks.not_a_server_error = NotAServerErrorConfig(expected_statuses=OTHER_SERVERS)
    if role != "anonymous":
        token = world.tokens[role]

        @schema.auth()
        class Bearer:
            def get(self, case: Any, ctx: Any) -> str:
                return token

            def set(self, case: Any, data: str, ctx: Any) -> None:
                case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}

    real = {"name": [vm.name for vm in world.vms.values()], "vm": [vm.name for vm in world.vms.values()],
            "backup_id": [vm.backup for vm in world.vms.values()], "job_id": [vm.job for vm in world.vms.values()]}

    @schema.hook
    def flatmap_path_parameters(ctx: Any, parameters: dict[str, Any]) -> Any:
        """Half the time, a parameter that names a VM, backup or job names one of the world's."""
        if not parameters:
            return st.just(parameters)
        return st.fixed_dictionaries({key: st.sampled_from(real[key]) | st.just(value) if key in real else st.just(value)
                                      for key, value in parameters.items()})

    @schema.hook
    def map_body(ctx: Any, body: Any) -> Any:
        """A body that says how long to wait (a stop's grace, a boot test), or leaves it to its
        default, waits MAX_WAIT at most."""
        if ctx.operation is None or not waits(world, ctx.operation.method, ctx.operation.path):
            return body
        if body is None:
            return {"timeout": MAX_WAIT}
        timeout = body.get("timeout", MAX_WAIT + 1) if isinstance(body, dict) else None
        if isinstance(timeout, int | float) and not isinstance(timeout, bool) and timeout > MAX_WAIT:
            return {**body, "timeout": MAX_WAIT}
        return body   # a timeout the case breaks on purpose (not a number) stays broken

    @schema.hook
    def map_query(ctx: Any, query: Any) -> Any:
        # The event stream ends with the job it follows: a finished one, so it ends at once.
        if ctx.operation is not None and ctx.operation.path == STREAM:
            return {**(query or {}), "job": world.vms["shared"].job}
        return query

    return schema


def waits(world: World, method: str, path: str) -> bool:
    """Whether the operation's body has a `timeout` the route waits for."""
    body = world.spec()["paths"][path][method.lower()].get("requestBody", {})
    schema = body.get("content", {}).get("application/json", {}).get("schema", {})
    refs = [schema, *schema.get("anyOf", [])]
    components = world.spec()["components"]["schemas"]
    return any("timeout" in components[ref["$ref"].rsplit("/", 1)[1]].get("properties", {}) for ref in refs if "$ref" in ref)


def cases_of(operation: Any, mode: GenerationMode, failures: Counter[str], examples: dict[str, str]) -> int:
    """Runs EXAMPLES cases of the operation in this mode, counting each check that fails; returns how many ran."""
    cases = 0

    @seed(SEED)
    @settings(max_examples=EXAMPLES, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        nonlocal cases
        cases += 1
        try:
            case.call_and_validate(excluded_checks=[positive_data_acceptance])
        except (Exception, BaseExceptionGroup) as e:   # a check's failure, or no answer at all
            for failure in getattr(e, "exceptions", [e]):
                key = f"{operation.label} ({mode.value}): {type(failure).__name__}: {str(failure).splitlines()[0]}"
                failures[key] += 1
                examples.setdefault(key, f"{failure}\n{case.as_curl_command()}")
    try:
        run()
    except Unsatisfiable:   # nothing of the operation can break its schema (no parameter, no body)
        assert mode is GenerationMode.NEGATIVE, operation.label
    return cases


@pytest.mark.slow
@pytest.mark.parametrize("role", ROLES)
def test_every_operation_keeps_the_published_contract(world: World, role: str):
    schema = contract_schema(world, role)
    failures: Counter[str] = Counter()
    examples: dict[str, str] = {}
    cases = sum(cases_of(result.ok(), mode, failures, examples)
                for result in schema.get_all_operations() for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE))
    print(f"{role}: {cases} cases generated, seed {SEED} ($CAIRN_CONTRACT_SEED), {EXAMPLES} examples per operation and mode")
    assert not failures, "\n\n".join(f"{count}x {key}\n{examples[key]}" for key, count in failures.most_common())
