"""The release workflow, checked offline: triggers, steps, OIDC permissions, no stored AWS keys."""

import re
from pathlib import Path

import pytest
import yaml

WORKFLOW = Path(__file__).resolve().parents[2] / ".github" / "workflows" / "release.yml"


@pytest.fixture(scope="module")
def workflow_text() -> str:
    return WORKFLOW.read_text()


@pytest.fixture(scope="module")
def workflow(workflow_text: str) -> dict:
    return yaml.safe_load(workflow_text)


@pytest.fixture(scope="module")
def job(workflow: dict) -> dict:
    assert list(workflow["jobs"]) == ["release"]
    return workflow["jobs"]["release"]


def _triggers(workflow: dict) -> dict:
    # YAML 1.1, which PyYAML implements, reads the bare key `on` as the boolean true.
    return workflow.get("on", workflow.get(True))


def _step_index(steps: list[dict], predicate, description: str) -> int:
    matches = [index for index, step in enumerate(steps) if predicate(step)]
    assert len(matches) == 1, f"expected one step that {description}, found {len(matches)}"
    return matches[0]


def _uses(action: str):
    return lambda step: step.get("uses", "").split("@")[0] == action


def _runs(pattern: str):
    return lambda step: re.search(pattern, step.get("run", "")) is not None


def test_workflow_runs_on_main_and_version_tags(workflow: dict):
    triggers = _triggers(workflow)

    assert list(triggers) == ["push"]
    assert triggers["push"]["branches"] == ["main"]
    assert triggers["push"]["tags"] == ["v*"]


def test_workflow_job_may_request_oidc_token(workflow: dict, job: dict):
    assert workflow["permissions"] == {"contents": "read"}
    assert job["permissions"] == {"id-token": "write", "contents": "read"}


def test_workflow_job_has_time_limit(job: dict):
    assert 0 < job["timeout-minutes"] <= 60


def test_workflow_tests_before_aws_login_and_push(job: dict):
    steps = job["steps"]

    checkout = _step_index(steps, _uses("actions/checkout"), "checks out")
    test = _step_index(steps, _runs(r"^make test$"), "runs make test")
    credentials = _step_index(steps, _uses("aws-actions/configure-aws-credentials"),
                              "assumes the AWS role")
    login = _step_index(steps, _uses("aws-actions/amazon-ecr-login"), "logs in to ECR")
    push = _step_index(steps, _runs(r"\bmake push\b"), "runs make push")

    assert checkout < test < credentials < login < push


def test_workflow_assumes_role_from_variable(job: dict):
    step = next(step for step in job["steps"] if _uses("aws-actions/configure-aws-credentials")(step))

    assert step["with"]["role-to-assume"] == "${{ vars.AWS_ROLE_ARN }}"
    assert step["with"]["aws-region"] == "${{ vars.AWS_REGION }}"


def test_workflow_pushes_to_logged_in_registry(job: dict):
    login = next(step for step in job["steps"] if _uses("aws-actions/amazon-ecr-login")(step))
    push = next(step for step in job["steps"] if _runs(r"\bmake push\b")(step))

    assert login["id"] == "login"
    assert "REGISTRY=${{ steps.login.outputs.registry }}" in push["run"]


def test_workflow_builds_without_buildkit(job: dict):
    # BuildKit can add provenance attestations, which make the pushed image an OCI index.
    assert job["env"]["DOCKER_BUILDKIT"] == "0"


def test_workflow_actions_name_versions(job: dict):
    for step in job["steps"]:
        if "uses" in step:
            assert re.fullmatch(r"[\w.-]+/[\w.-]+@(v\d+(\.\d+)*|[0-9a-f]{40})", step["uses"]), step["uses"]


@pytest.mark.parametrize("forbidden", ["aws-access-key-id", "aws-secret-access-key",
                                       "aws-session-token", "secrets."])
def test_workflow_uses_no_stored_secrets(workflow_text: str, forbidden: str):
    assert forbidden not in workflow_text.lower()
