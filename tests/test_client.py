"""`kd.serving.Client` against the embedded server, over REST and gRPC, with real kd exports.

Specification: DESIGN.md section 4 (`export`'s signatures, `Client`) and section 6 (TF Serving's
protocols and codes). A classifier (BatchNormalization + MCDropout) and a regressor are exported
with `kd.serving.export` and served from a models.config by one `Server` on loopback; every
answer is compared with the in-process model (`model.predict`, `kd.predict_mc`). The checks
shared with the real TF Serving test live in `client_checks`.
"""

import json
import socket
import threading
import time

import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("grpc")
requests = pytest.importorskip("requests")
pytest.importorskip("uvicorn")
pytest.importorskip("tensorflow_serving")

import client_checks as checks  # noqa: E402
import serving_fixtures as fixtures  # noqa: E402

import keras_dropout as kd  # noqa: E402
from keras_dropout.serving import Client  # noqa: E402
from keras_dropout.serving import Server  # noqa: E402
from keras_dropout.serving import ServingError  # noqa: E402

pytestmark = pytest.mark.tf_only

POLL_S = 1.0
X = checks.make_x()
TRANSPORTS = ("rest", "grpc")


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def models():
    return {"classifier": checks.build_classifier(0), "regressor": checks.build_regressor(0)}


@pytest.fixture(scope="module")
def model_root(tmp_path_factory, models):
    root = tmp_path_factory.mktemp("models")
    for name, model in models.items():
        checks.export(model, root / name)
    fixtures.write_model_config(
        str(root / "models.config"), {name: (str(root / name), []) for name in models}
    )
    return root


@pytest.fixture(scope="module")
def server(model_root):
    server = Server(
        model_config_file=str(model_root / "models.config"),
        port=0,
        rest_api_port=0,
        file_system_poll_wait_seconds=POLL_S,
    )
    server.start()
    yield server
    server.stop(grace=1)


def _client(server, transport):
    if transport == "rest":
        return Client(rest_url=server.rest_url, model_name="classifier", transport="rest")
    return Client(grpc_target=server.grpc_target, model_name="classifier", transport="grpc")


@pytest.fixture(scope="module")
def clients(server):
    opened = {transport: _client(server, transport) for transport in TRANSPORTS}
    yield opened
    for client in opened.values():
        client.close()


@pytest.fixture(params=TRANSPORTS)
def client(request, clients):
    return clients[request.param]


# ----------------------------------------------------------------------------- answers


@pytest.mark.parametrize("model_name", ["classifier", "regressor"])
def test_serving_default_equals_in_process_predict(client, models, model_name):
    checks.assert_serving_default_equals_predict(client, model_name, models[model_name], X)


@pytest.mark.parametrize(
    "model_name, names, units",
    [
        ("classifier", checks.CLASSIFIER_MC_OUTPUTS, checks.CLASSES),
        ("regressor", checks.REGRESSOR_MC_OUTPUTS, 1),
    ],
)
def test_mc_answers_are_batch_major_with_the_documented_names(client, model_name, names, units):
    checks.assert_mc_is_batch_major_with_documented_names(client, model_name, X, names, units)


@pytest.mark.parametrize("model_name", ["classifier", "regressor"])
def test_mc_and_mc_sample_match_predict_mc_in_distribution(client, models, model_name):
    reference = kd.predict_mc(models[model_name], X, num_samples=4000, seed=0, verbose=0)
    served = {
        checks.MC_NUM_SAMPLES: client.predict({"x": X}, "mc", model_name=model_name),
        checks.MAX_SAMPLES: client.predict(
            checks.sample_inputs(X, checks.MAX_SAMPLES, 11), "mc_sample", model_name=model_name
        ),
    }
    for num_samples, outputs in served.items():
        # Each served mean is an average of `num_samples` draws: within 5 standard errors.
        standard_error = reference.stddev / np.sqrt(num_samples)
        assert np.all(np.abs(outputs["mean"] - reference.mean) <= 5 * standard_error + 1e-4)
        np.testing.assert_allclose(outputs["stddev"].mean(), reference.stddev.mean(), rtol=0.15)
        if model_name == "classifier":
            np.testing.assert_allclose(outputs["mean"].sum(axis=1), 1.0, rtol=1e-5)
            np.testing.assert_allclose(
                outputs["predictive_entropy"].mean(), reference.predictive_entropy.mean(), rtol=0.1
            )


def test_mc_sample_with_one_seed_answers_identically_across_requests_and_transports(clients):
    answers = {
        transport: checks.assert_mc_sample_repeats_for_its_seed(client, "classifier", X, seed=5)
        for transport, client in clients.items()
    }
    checks.assert_same_outputs(answers["rest"], answers["grpc"])
    regressor = {
        transport: checks.as_float32(
            client.predict(checks.sample_inputs(X, 16, 5), "mc_sample", model_name="regressor")
        )
        for transport, client in clients.items()
    }
    checks.assert_same_outputs(regressor["rest"], regressor["grpc"])


@pytest.mark.parametrize("model_name", ["classifier", "regressor"])
def test_mc_sample_with_zero_samples_is_the_deterministic_pass(client, models, model_name):
    outputs = client.predict(checks.sample_inputs(X, 0, 3), "mc_sample", model_name=model_name)
    deterministic = client.predict({"x": X}, "serving_default", model_name=model_name)
    (name,) = deterministic
    np.testing.assert_allclose(outputs["mean"], deterministic[name], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(outputs["variance"], 0.0)
    np.testing.assert_allclose(outputs["mean"], models[model_name].predict(X, verbose=0), rtol=1e-5, atol=1e-6)


def test_status_has_tf_servings_shape(client):
    checks.assert_status_is_tf_servings(client.status())
    checks.assert_status_is_tf_servings(client.status(model_name="regressor"))


def test_metadata_has_tf_servings_shape(client):
    checks.assert_metadata_is_tf_servings(client.metadata(), "classifier")
    checks.assert_metadata_is_tf_servings(client.metadata(model_name="regressor"), "regressor")


def test_status_and_metadata_read_the_same_over_both_transports(clients):
    assert clients["rest"].status() == clients["grpc"].status()
    assert clients["rest"].metadata() == clients["grpc"].metadata()


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("request_, code, http_status", checks.ERROR_CASES)
def test_errors_have_tf_serving_codes_and_the_next_request_succeeds(
    client, models, request_, code, http_status
):
    checks.assert_error_then_recovery(
        client, "classifier", models["classifier"], X, request_, code, http_status
    )


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_unreachable_server_is_a_serving_error_unavailable(transport):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    address = f"127.0.0.1:{port}"
    client = Client(rest_url=f"http://{address}", grpc_target=address, transport=transport, timeout=10)
    with client, pytest.raises(ServingError) as raised:
        client.predict({"x": X}, "serving_default")
    assert raised.value.code == "UNAVAILABLE"


# ----------------------------------------------------------------------------- concurrency


def test_concurrent_mc_requests_neither_corrupt_each_other_nor_serving_default(server, clients):
    seeds = (0, 1, 2, 3)
    expected = {
        seed: checks.as_float32(
            clients["grpc"].predict(checks.sample_inputs(X, 32, seed), "mc_sample")
        )
        for seed in seeds
    }
    deterministic = checks.as_float32(clients["grpc"].predict({"x": X}, "serving_default"))
    failures = []

    def worker(index):
        own = {transport: _client(server, transport) for transport in TRANSPORTS}
        try:
            for i in range(10):
                client = own[TRANSPORTS[(index + i) % 2]]
                if (index + i) % 3 == 0:
                    answer = checks.as_float32(client.predict({"x": X}, "serving_default"))
                    checks.assert_same_outputs(answer, deterministic)
                else:
                    seed = seeds[(index * 7 + i) % len(seeds)]
                    answer = client.predict(checks.sample_inputs(X, 32, seed), "mc_sample")
                    checks.assert_same_outputs(checks.as_float32(answer), expected[seed])
        except Exception as error:  # collected and reported from the main thread
            failures.append(error)
        finally:
            for client in own.values():
                client.close()

    threads = [threading.Thread(target=worker, args=(index,)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    assert not failures, failures


# ----------------------------------------------------------------------------- versions


def test_version_exported_while_serving_becomes_the_default_within_the_poll_interval(tmp_path):
    base = tmp_path / "hot"
    first, second = checks.build_classifier(0), checks.build_classifier(1)
    checks.export(first, base)
    with Server(
        model_name="hot", model_base_path=str(base), port=0, rest_api_port=0,
        file_system_poll_wait_seconds=POLL_S,
    ) as server, _client(server, "rest") as rest, _client(server, "grpc") as grpc_client:
        for client in (rest, grpc_client):
            checks.assert_serving_default_equals_predict(client, "hot", first, X)
        assert not np.allclose(first.predict(X, verbose=0), second.predict(X, verbose=0), atol=1e-3)

        assert checks.export(second, base).endswith("2")
        written = time.monotonic()
        seen = lambda: "2" in {s["version"] for s in rest.status("hot")["model_version_status"]}  # noqa: E731
        assert checks.wait_until(seen, timeout=30)
        # One poll interval, plus slack for a loaded machine.
        assert time.monotonic() - written < POLL_S + 5.0
        assert checks.wait_until(lambda: "2" in checks.available_versions(rest, "hot"), timeout=30)

        for client in (rest, grpc_client):
            checks.assert_serving_default_equals_predict(client, "hot", second, X)
            assert client.metadata("hot")["model_spec"]["version"] == "2"
            checks.assert_mc_sample_repeats_for_its_seed(client, "hot", X, seed=1)


# ----------------------------------------------------------------------------- raw HTTP


def _post(server, body):
    response = requests.post(
        f"{server.rest_url}/v1/models/classifier:predict", data=json.dumps(body), timeout=30
    )
    assert response.status_code == 200, response.text
    return json.loads(response.text)


def test_raw_http_row_format_mc_answers_predictions_one_object_per_row(server):
    answer = _post(server, {"signature_name": "mc", "instances": X.tolist()})
    assert set(answer) == {"predictions"}
    rows = answer["predictions"]
    assert len(rows) == len(X)
    for row in rows:
        assert set(row) == set(checks.CLASSIFIER_MC_OUTPUTS)
        assert len(row["mean"]) == checks.CLASSES
        assert isinstance(row["predictive_entropy"], float)
        assert sum(row["mean"]) == pytest.approx(1.0, abs=1e-5)


def test_raw_http_columnar_format_mc_answers_outputs_by_name(server, clients):
    answer = _post(server, {"signature_name": "mc", "inputs": {"x": X.tolist()}})
    assert set(answer) == {"outputs"}
    outputs = answer["outputs"]
    assert set(outputs) == set(checks.CLASSIFIER_MC_OUTPUTS)
    assert np.shape(outputs["mean"]) == (len(X), checks.CLASSES)
    assert np.shape(outputs["mutual_information"]) == (len(X),)

    body = {"signature_name": "mc_sample", "inputs": {"x": X.tolist(), "num_samples": 32, "seed": 4}}
    raw = checks.as_float32(_post(server, body)["outputs"])
    via_client = checks.as_float32(clients["grpc"].predict(checks.sample_inputs(X, 32, 4), "mc_sample"))
    checks.assert_same_outputs(raw, via_client)


# ----------------------------------------------------------------------------- input dtypes


def _recording(client, monkeypatch):
    """Records the gRPC methods `client` calls."""
    calls = []
    call = client._grpc_call

    def recorded(service, method, request):
        calls.append(method)
        return call(service, method, request)

    monkeypatch.setattr(client, "_grpc_call", recorded)
    return calls


@pytest.mark.parametrize("model_name", ["classifier", "regressor"])
def test_grpc_casts_python_ints_and_float64_to_the_signature_dtypes_as_rest_does(clients, model_name):
    # float64 values float32 cannot hold exactly: both transports round them the same way.
    x64 = np.random.default_rng(3).normal(size=X.shape)
    inputs = {"x": x64, "num_samples": 32, "seed": 9}
    answers = {
        transport: checks.as_float32(client.predict(inputs, "mc_sample", model_name=model_name))
        for transport, client in clients.items()
    }
    checks.assert_same_outputs(answers["grpc"], answers["rest"])
    typed = clients["grpc"].predict(
        checks.sample_inputs(x64.astype("float32"), 32, 9), "mc_sample", model_name=model_name
    )
    checks.assert_same_outputs(answers["grpc"], checks.as_float32(typed))
    deterministic = clients["grpc"].predict({"x": x64.tolist()}, "serving_default", model_name=model_name)
    (name,) = deterministic
    assert deterministic[name].dtype == np.float32


def test_grpc_reads_the_signature_dtypes_once_per_model_version_and_signature(server, monkeypatch):
    with _client(server, "grpc") as client:
        calls = _recording(client, monkeypatch)
        for seed in (1, 2, 3):
            client.predict({"x": X, "num_samples": 4, "seed": seed}, "mc_sample")
        client.predict({"x": X}, "serving_default")
        client.predict({"x": X}, "serving_default", version=1)
    assert calls.count("GetModelMetadata") == 3, calls
    assert calls.count("Predict") == 5, calls


@pytest.mark.parametrize(
    "inputs, name, dtype, received",
    [
        pytest.param({"seed": 0.5}, "seed", "int64", r"0\.5 \(float\), which is not a whole number", id="fraction-for-int64"),
        pytest.param({"num_samples": np.array(2.5)}, "num_samples", "int32", r"2\.5 .*not a whole number", id="fraction-for-int32"),
        pytest.param({"num_samples": 2**31}, "num_samples", "int32", r"2147483648 \(int\), which is out of range", id="over-int32"),
        pytest.param({"seed": 2**63}, "seed", "int64", r"9223372036854775808 .*out of range", id="over-int64"),
        pytest.param({"seed": -(2**70)}, "seed", "int64", r"-1180591620717411303424 .*out of range", id="under-int64"),
        pytest.param({"seed": "7"}, "seed", "int64", r"'7' \(str\), which is a string", id="string-for-int"),
        pytest.param({"x": [["a"] * 4]}, "x", "float32", r"an array .* holding 'a', which is a string", id="string-for-float"),
        pytest.param({"x": np.full((1, 4), 1e300)}, "x", "float32", r"an array .* holding 1e\+300, which is out of range", id="over-float32"),
        pytest.param({"num_samples": True}, "num_samples", "int32", r"True \(bool\), which is a boolean", id="bool-for-int"),
    ],
)
def test_grpc_refuses_a_cast_that_changes_a_value_before_sending_predict(
    server, monkeypatch, inputs, name, dtype, received
):
    expected = rf"input '{name}' of signature 'mc_sample': the signature's dtype is {dtype}, but received {received}"
    with _client(server, "grpc") as client:
        calls = _recording(client, monkeypatch)
        with pytest.raises(ValueError, match=expected):
            client.predict({"x": X, "num_samples": 8, "seed": 1, **inputs}, "mc_sample")
    assert "Predict" not in calls


def test_grpc_leaves_unknown_input_names_to_the_server(clients, models):
    inputs = {"x": X, "num_samples": 8, "seed": 1, "no_such_input": 0.5}
    with pytest.raises(ServingError) as raised:
        clients["grpc"].predict(inputs, "mc_sample")
    assert raised.value.code == "INVALID_ARGUMENT"
    assert "no_such_input" in raised.value.message
    checks.assert_serving_default_equals_predict(clients["grpc"], "classifier", models["classifier"], X)
