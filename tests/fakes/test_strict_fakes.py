"""The strict fakes refuse what the real servers refuse, with the real answers' shapes.

Each case is a request a real server refuses (or silently alters), sent through the same client
library distilflow uses, and the answer checked against the apiserver's / webhook's message format.
"""

from __future__ import annotations

import copy
import json

import pytest

from tests.fakes.k8s_schema import ApiError, admit, cel_to_python, load_crd

TRAINJOB = {
    "apiVersion": "trainer.kubeflow.org/v1alpha1",
    "kind": "TrainJob",
    "metadata": {"name": "sft-1"},
    "spec": {
        "runtimeRef": {"name": "torch-distributed", "kind": "ClusterTrainingRuntime"},
        "trainer": {"numNodes": 2},
    },
}


def test_every_cel_rule_of_the_vendored_schemas_is_evaluated():
    """No x-kubernetes-validations rule is skipped as too complex: all translate."""
    from tests.fakes.k8s_api_server import SCHEMAS
    from tests.fakes.trainjob_api_server import SCHEMAS as TRAINER_SCHEMAS

    def rules(node):
        if isinstance(node, dict):
            yield from (r["rule"] for r in node.get("x-kubernetes-validations", []))
            for value in node.values():
                yield from rules(value)
        elif isinstance(node, list):
            for value in node:
                yield from rules(value)

    found = [r for f in {*SCHEMAS.values(), *TRAINER_SCHEMAS.values()} for r in rules(load_crd(f).schema)]
    assert found and [r for r in found if cel_to_python(r) is None] == []


def test_strict_unknown_field_is_a_bad_request_and_warn_drops_it():
    crd = load_crd("trainjobs.trainer.kubeflow.org.v2.3.0.json")
    body = copy.deepcopy(TRAINJOB)
    body["spec"]["trainer"]["secretEnv"] = {"A": "s/k"}
    with pytest.raises(ApiError) as err:
        admit(crd, body, field_validation="Strict")
    assert err.value.status == 400 and err.value.body["reason"] == "BadRequest"
    assert err.value.body["message"] == (
        'TrainJob in version "v1alpha1" cannot be handled as a TrainJob: strict decoding error: '
        'unknown field "spec.trainer.secretEnv"'
    )
    stored, warnings = admit(crd, body)  # the default (Warn): dropped, with a warning
    assert "secretEnv" not in stored["spec"]["trainer"] and warnings == [
        'unknown field "spec.trainer.secretEnv"'
    ]


def test_schema_errors_are_422_with_the_apiserver_message():
    crd = load_crd("trainjobs.trainer.kubeflow.org.v2.2.0.json")
    body = copy.deepcopy(TRAINJOB)
    body["spec"]["trainer"]["numNodes"] = "2"
    body["spec"]["managedBy"] = "me"
    del body["spec"]["runtimeRef"]["name"]
    with pytest.raises(ApiError) as err:
        admit(crd, body, field_validation="Strict")
    assert err.value.status == 422 and err.value.body["reason"] == "Invalid"
    message = err.value.body["message"]
    assert message.startswith('TrainJob.trainer.kubeflow.org "sft-1" is invalid: [')
    for part in (
        "spec.runtimeRef.name: Required value",
        'spec.trainer.numNodes: Invalid value: "string": spec.trainer.numNodes in body must be of type integer: "string"',
        'spec.managedBy: Invalid value: "string": ManagedBy must be trainer.kubeflow.org/trainjob-controller',
    ):
        assert part in message
    causes = {c["field"]: c["reason"] for c in err.value.body["details"]["causes"]}
    assert causes["spec.runtimeRef.name"] == "FieldValueRequired"
    assert causes["spec.trainer.numNodes"] == "FieldValueInvalid"
    kserve = load_crd("inferenceservices.serving.kserve.io.v0.15.0.json")
    with pytest.raises(
        ApiError,
        match='spec.predictor.scaleMetric: Unsupported value: "gpu": supported values: "cpu", "memory"',
    ):
        admit(kserve, isvc(scaleMetric="gpu"))
    long_name = copy.deepcopy(TRAINJOB)
    long_name["metadata"]["name"] = "a" * 64  # a valid subdomain, but the CRD's CEL rule says <= 63
    with pytest.raises(ApiError, match="metadata.name must be no more than 63 characters"):
        admit(crd, long_name)


@pytest.fixture
def kserve(monkeypatch, tmp_path):
    from tests.fakes.k8s_api_server import FakeKServe, write_kubeconfig

    fake = FakeKServe(predictor_url="http://127.0.0.1:9", ready_after=1)
    url = fake.start()
    monkeypatch.setenv("KUBECONFIG", write_kubeconfig(str(tmp_path / "kubeconfig"), url, "tok"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    from distilflow.components.deploy.kserve import custom_objects_api

    yield fake, custom_objects_api(None)
    fake.stop()


def isvc(mode: str = "RawDeployment", **predictor) -> dict:
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": "student", "annotations": {"serving.kserve.io/deploymentMode": mode}},
        "spec": {"predictor": {"containers": [{"name": "kserve-container", "image": "vllm"}], **predictor}},
    }


ARGS = ("serving.kserve.io", "v1beta1", "default", "inferenceservices")


def test_kserve_fake_answers_like_the_apiserver(kserve):
    from kubernetes.client.exceptions import ApiException

    fake, api = kserve
    api.create_namespaced_custom_object(*ARGS, isvc(nodeSelectors={"a": "b"}))  # no Strict: dropped, warned
    assert "nodeSelectors" not in fake.objects[("default", "student")]["spec"]["predictor"]
    assert fake.warnings == ['unknown field "spec.predictor.nodeSelectors"']
    stored = api.get_namespaced_custom_object(*ARGS, "student")
    assert stored["status"]["deploymentMode"] == "Standard"  # v0.20 renames the legacy mode

    body = isvc()
    body["metadata"]["resourceVersion"] = "0"  # stale
    with pytest.raises(ApiException) as err:
        api.replace_namespaced_custom_object(*ARGS, "student", body, field_validation="Strict")
    assert err.value.status == 409 and "the object has been modified" in json.loads(err.value.body)["message"]

    changed = isvc("Serverless")
    changed["metadata"]["resourceVersion"] = stored["metadata"]["resourceVersion"]
    with pytest.raises(ApiException) as err:
        api.replace_namespaced_custom_object(*ARGS, "student", changed, field_validation="Strict")
    message = json.loads(err.value.body)["message"]
    assert err.value.status == 403 and message == (
        'admission webhook "inferenceservice.kserve-webhook-server.validator" denied the request: update '
        "rejected: deploymentMode cannot be changed from 'Standard' to 'Knative'"
    )
    bad = isvc()
    bad["metadata"]["name"] = "1student"
    with pytest.raises(ApiException) as err:
        api.create_namespaced_custom_object(*ARGS, bad)
    assert err.value.status == 403 and "a InferenceService name must consist of lower case" in err.value.body


def test_knative_refuses_a_serverless_node_selector_and_the_service_never_gets_ready(kserve):
    """What a real cluster does with Knative's default flags: the InferenceService is accepted, its
    revision is refused, and it stays not Ready with Knative's message."""
    fake, api = kserve
    api.create_namespaced_custom_object(*ARGS, isvc("Serverless", nodeSelector={"pool": "gpu"}))
    for _ in range(3):
        status = api.get_namespaced_custom_object(*ARGS, "student")["status"]
    ready = {c["type"]: c for c in status["conditions"]}["Ready"]
    assert ready["status"] == "False"
    assert ready["message"].endswith("must not set the field(s): spec.template.spec.nodeSelector")
    fake.knative_features["kubernetes.podspec-nodeselector"] = "enabled"
    status = api.get_namespaced_custom_object(*ARGS, "student")["status"]
    assert {c["type"]: c["status"] for c in status["conditions"]}["Ready"] == "True"


def test_trainer_fake_refuses_what_the_trainer_webhook_refuses(tmp_path, monkeypatch):
    from kubernetes.client.exceptions import ApiException

    from distilflow.launch.trainjob import _client
    from tests.fakes.k8s_api_server import write_kubeconfig
    from tests.fakes.trainjob_api_server import FakeTrainer

    fake = FakeTrainer(lambda job: None, [])
    url = fake.start()
    try:
        monkeypatch.setenv("KUBECONFIG", write_kubeconfig(str(tmp_path / "kubeconfig"), url, "tok", "team-a"))
        api = _client(None, None).backend.custom_api
        args = ("trainer.kubeflow.org", "v1alpha1", "team-a", "trainjobs")
        reserved = copy.deepcopy(TRAINJOB)
        reserved["spec"]["trainer"]["env"] = [{"name": "PET_NNODES", "value": "4"}]
        missing = copy.deepcopy(TRAINJOB)
        missing["spec"]["runtimeRef"]["name"] = "deepspeed-distributed"
        answers = []
        for body in (reserved, missing):
            with pytest.raises(ApiException) as err:
                api.create_namespaced_custom_object(*args, body, field_validation="Strict")
            answers.append((err.value.status, json.loads(err.value.body)["message"]))
    finally:
        fake.stop()
    prefix = 'admission webhook "validator.trainjob.trainer.kubeflow.org" denied the request: '
    assert answers[0][0] == 403 and answers[0][1].startswith(prefix + "spec.trainer.env: Invalid value: ")
    assert answers[0][1].endswith("must not have reserved envs, invalid envs configured: [PET_NNODES]")
    assert (
        answers[1][0] == 403
        and 'clustertrainingruntimes.trainer.kubeflow.org "deepspeed-distributed" not found' in answers[1][1]
    )
    assert fake.jobs == {}


def test_eas_and_dlc_fakes_refuse_invalid_bodies():
    from tests.fakes import dlc_request_schema, eas_service_schema

    assert eas_service_schema.problems({"metadata": {"name": "Svc"}, "containers": [{"port": 0}]}) == [
        "metadata.name: 'Svc' is not 3-63 lowercase letters, digits or '_' starting with a letter",
        "cloud.computing: required without metadata.resource (the public resource group needs an instance type)",
        "containers[0].image: required",
        "containers[0].port: 0 is not a port number",
    ]
    both = {
        "metadata": {"name": "svc", "resource": "eas-r-1"},
        "cloud": {"computing": {"instance_type": "x"}},
    }
    assert "not both" in eas_service_schema.problems(both)[0]
    assert dlc_request_schema.problems(
        {"JobType": "SparkJob", "JobSpecs": [{"Type": "Worker", "PodCount": 0}]}
    ) == [
        "DisplayName: required",
        "UserCommand: required",
        "JobType: 'SparkJob' is not one of TFJob, PyTorchJob, MPIJob, XGBoostJob, OneFlowJob, ElasticBatchJob, SlurmJob, RayJob",
        "JobSpecs[0].Image: required",
        "JobSpecs[0].PodCount: 0 is not an integer >= 1",
        "JobSpecs[0].EcsSpec: required on public resources (no ResourceId)",
    ]
