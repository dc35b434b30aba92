"""Property-based tests of every endpoint from the service's own `/openapi.json` (Schemathesis).

Each operation gets bounded examples, valid and invalid (Schemathesis's positive and negative
modes), sent to the real app in process. Every check Schemathesis has runs: never a 5xx, status
codes and content types as described, every response body (errors included) valid against the
described schema, which for errors is the one `Error` shape; invalid data is refused.
"""
from __future__ import annotations

import atexit
import json
import shutil
import tempfile
from pathlib import Path

import pytest
import schemathesis
from schemathesis.config import SchemathesisConfig
from hypothesis import HealthCheck, settings

from tests.support.cds_app import make_app

MAX_EXAMPLES = 25
_INSTANCE = Path(tempfile.mkdtemp(prefix="triage-fuzz-"))
atexit.register(shutil.rmtree, _INSTANCE, True)


class _LazyApp:
    """The app under test, built on the first request (not at collection: it loads Presidio)."""

    def __init__(self) -> None:
        self.app = None

    def __call__(self, environ, start_response):
        if self.app is None:
            self.app = make_app(_INSTANCE / "app", TRIAGE_MAX_BODY_BYTES=256 * 1024)
        return self.app(environ, start_response)


def _document() -> dict:
    # The description only depends on the registry and the auth setting: a light app writes it.
    # (Schemathesis's fixture-based loader does not run under pytest 9, so the schema is loaded here.)
    light = make_app(_INSTANCE / "light", TRIAGE_SCRUB_FREE_TEXT=False)
    return light.test_client().get("/openapi.json").get_json()


# Valid requests may still be refused for what no schema can say: 412 when the EHR has no data for
# this patient (CDS Hooks' own status), 413 above the body limit.
CONFIG = SchemathesisConfig.from_dict({"checks": {"positive_data_acceptance": {
    "expected-statuses": ["2XX", "401", "404", "412", "413"]}}})
schema = schemathesis.openapi.from_dict(_document(), config=CONFIG)
schema.app = _LazyApp()


@pytest.fixture(scope="module")
def fuzz_app(tmp_path_factory):
    return make_app(tmp_path_factory.mktemp("fuzz"), TRIAGE_SCRUB_FREE_TEXT=False)


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
def test_every_endpoint(case):
    response = case.call_and_validate()
    assert response.status_code < 500
    if response.status_code >= 400 and case.path != "/ready":
        body = response.json()
        assert set(body) <= {"error", "message", "errorId"} and body["error"]


def test_the_description_names_every_route_and_the_community_definitions(fuzz_app):
    document = fuzz_app.test_client().get("/openapi.json").get_json()
    assert document["openapi"].startswith("3.1")
    described = {path.replace("{serviceId}", "x") for path in document["paths"]}
    routes = {str(rule) for rule in fuzz_app.url_map.iter_rules() if rule.endpoint != "static"}
    services = [s.id for s in fuzz_app.extensions["triage_registry"]]
    expanded = {r.replace("<service_id>", s) for r in routes for s in services}
    assert expanded <= described, expanded - described
    schemas = document["components"]["schemas"]
    for name in ("CdsServiceInformation", "CdsService", "CdsRequest", "CdsResponse", "Card", "Source",
                 "Suggestion", "Action", "Link", "Coding", "FhirAuthorization", "Feedback", "Error"):
        assert name in schemas, name
    ops = {op["operationId"] for item in document["paths"].values() for op in item.values()}
    assert {"cdsServicesGet", "cdsServicePost.triage", "cdsServiceFeedbackPost.triage"} <= ops
    # No security requirement when the JWT check is off (development app)...
    assert document["paths"]["/cds-services"]["get"]["security"] == []
    assert json.dumps(document).count("HookRequest") == 0  # our internal names are not shown


def test_with_auth_on_the_cds_endpoints_require_the_client_jwt(tmp_path):
    app = make_app(tmp_path, TRIAGE_INSECURE_NO_AUTH=False, TRIAGE_CLIENTS_FILE=None)
    client = app.test_client()
    response = client.get("/openapi.json")  # public, like /health
    assert response.status_code == 200
    document = response.get_json()
    assert document["paths"]["/cds-services/triage"]["post"]["security"] == [{"clientIssuedJwt": []}]
    assert document["components"]["securitySchemes"]["clientIssuedJwt"]["scheme"] == "bearer"
    assert document["paths"]["/health"]["get"]["security"] == []
