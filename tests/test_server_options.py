"""The embedded server's TF Serving options beyond the API: batching, monitoring, config reload,
health, CORS, the UNIX socket, warmup and ignored flags; each as a client sees it.

TF Serving's own cases for these flags are ported in `test_tfs_model_server.py`; this module
checks what those cases leave out: that batching really merges concurrent requests and every
client gets its own rows, that the Prometheus text parses with `prometheus_client.parser` and
counts what was sent, that a changed models.config is applied while serving, and that every
ignored flag is named in a warning.
"""

import argparse
import json
import logging
import os
import shutil
import threading

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
grpc = pytest.importorskip("grpc")
requests = pytest.importorskip("requests")
pytest.importorskip("prometheus_client")

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from tensorflow_serving.apis import classification_pb2  # noqa: E402
from tensorflow_serving.apis import predict_pb2  # noqa: E402
from tensorflow_serving.apis import prediction_log_pb2  # noqa: E402
from tensorflow_serving.apis import prediction_service_pb2_grpc  # noqa: E402

import serving_fixtures as fixtures  # noqa: E402
import tfs_models  # noqa: E402
from keras_dropout.serving import server as server_module  # noqa: E402

pytestmark = pytest.mark.tf_only

CLIENTS = 8


def parse_flags(*flags):
    return server_module.add_serve_arguments(argparse.ArgumentParser()).parse_args(list(flags))


def start(*flags):
    return server_module.server_from_args(
        parse_flags("--port=0", "--rest_api_port=0", *flags)
    ).start()


def wait_until(condition, timeout=30.0):
    done = threading.Event()
    for _ in range(int(timeout / 0.05)):
        if condition():
            return True
        done.wait(0.05)
    return condition()


def predict_request(x, model="hp2", signature=""):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.asarray(x, np.float32)))
    return request


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("options")
    tfs_models.save_half_plus_two(str(root / "hp2" / "00000123"))
    (root / "monitoring.config").write_text(
        'prometheus_config { enable: true, path: "/monitoring/prometheus/metrics" }\n'
    )
    # A long timeout and a barrier in the test make every batch the full CLIENTS rows.
    (root / "batching.config").write_text(
        f"max_batch_size {{ value: {CLIENTS} }}\n"
        "batch_timeout_micros { value: 10000000 }\n"
        "num_batch_threads { value: 1 }\n"
    )
    return root


@pytest.fixture(scope="module")
def batching_server(root):
    server = start(
        "--model_name=hp2",
        f"--model_base_path={root / 'hp2'}",
        "--enable_batching",
        f"--batching_parameters_file={root / 'batching.config'}",
        f"--monitoring_config_file={root / 'monitoring.config'}",
    )
    yield server
    server.stop(grace=1)


@pytest.fixture(scope="module")
def batching_stub(batching_server):
    with grpc.insecure_channel(batching_server.grpc_target) as channel:
        yield prediction_service_pb2_grpc.PredictionServiceStub(channel)


@pytest.fixture(scope="module")
def server(root):
    server = start(
        "--model_name=hp2",
        f"--model_base_path={root / 'hp2'}",
        f"--monitoring_config_file={root / 'monitoring.config'}",
        "--enable_grpc_healthcheck_service=true",
        "--rest_api_enable_cors_support",
        f"--grpc_socket_path={root / 'grpc.sock'}",
        "--grpc_channel_arguments=grpc.max_connection_age_ms=600000,grpc.http2.max_pings_without_data=0",
    )
    yield server
    server.stop(grace=1)


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(server.grpc_target) as channel:
        yield prediction_service_pb2_grpc.PredictionServiceStub(channel)


def scrape(server):
    response = requests.get(server.rest_url + "/monitoring/prometheus/metrics", timeout=30)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {family.name: family for family in text_string_to_metric_families(response.text)}


def sample_value(families, family, name, **labels):
    # The parser names a counter's samples NAME_total, whatever the text says.
    for sample in families[family].samples:
        if sample.name in (name, name + "_total") and all(sample.labels.get(k) == v for k, v in labels.items()):
            return sample.value
    return 0.0


# ----------------------------------------------------------------------------- batching


def test_concurrent_requests_are_merged_and_each_client_gets_its_own_rows(
    batching_server, batching_stub
):
    server, stub = batching_server, batching_stub
    batches = ":keras_dropout:serving:batch_size"
    labels = dict(model_name="hp2", signature_name="serving_default")
    before = scrape(server)
    barrier = threading.Barrier(CLIENTS)
    answers = {}

    def client(index):
        x = [[float(index)]]
        barrier.wait()
        response = stub.Predict(predict_request(x), timeout=60)
        answers[index] = (x, tf.make_ndarray(response.outputs["y"]))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(answers) == list(range(CLIENTS))
    for x, y in answers.values():
        np.testing.assert_array_equal(y, np.asarray(x, np.float32) * 0.5 + 2)
    after = scrape(server)
    # max_batch_size is CLIENTS and the batch timeout 10 s: one full batch ran all of them.
    calls = sample_value(after, batches, batches + "_count", **labels) - sample_value(
        before, batches, batches + "_count", **labels
    )
    rows = sample_value(after, batches, batches + "_sum", **labels) - sample_value(
        before, batches, batches + "_sum", **labels
    )
    assert (calls, rows) == (1, CLIENTS)


def test_a_request_larger_than_max_batch_size_is_refused(batching_stub):
    with pytest.raises(grpc.RpcError) as raised:
        batching_stub.Predict(predict_request(np.zeros((CLIENTS + 1, 1))), timeout=60)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "max_batch_size" in raised.value.details() or "larger" in raised.value.details()


# ----------------------------------------------------------------------------- monitoring


def test_prometheus_endpoint_parses_and_counts_requests_by_model_api_and_signature(server, stub):
    before = scrape(server)
    stub.Predict(predict_request([[1.0]]), timeout=60)
    response = requests.post(
        server.rest_url + "/v1/models/hp2:predict", json={"instances": [[1.0]]}, timeout=30
    )
    assert response.status_code == 200
    bad = requests.post(
        server.rest_url + "/v1/models/hp2:predict",
        json={"signature_name": "nope", "instances": [[1.0]]},
        timeout=30,
    )
    assert bad.status_code == 400
    after = scrape(server)

    def delta(family, name, **labels):
        return sample_value(after, family, name, **labels) - sample_value(
            before, family, name, **labels
        )

    count = ":tensorflow:serving:request_count"
    assert delta(count, count, model_name="hp2", status="OK") == 2
    assert delta(count, count, model_name="hp2", status="FAILED_PRECONDITION") == 1
    latency = ":tensorflow:serving:request_latency"
    for entrypoint in ("GRPC", "REST"):
        assert delta(latency, latency + "_count", API="predict", entrypoint=entrypoint) >= 1
    signature = ":keras_dropout:serving:signature_request_count"
    assert delta(signature, signature, signature_name="serving_default", status="OK") == 2
    loads = after[":tensorflow:cc:saved_model:load_attempt_count"].samples
    assert any(
        s.labels["status"] == "success" and s.labels["model_path"].endswith("00000123") for s in loads
    )


def test_classify_examples_are_counted(server, stub):
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "hp2"
    request.model_spec.signature_name = "classify_x_to_y"
    for value in (1.0, 2.0, 3.0):
        request.input.example_list.examples.append(tfs_models.example(x=value))
    # The parser strips "_total" from a counter family's name.
    family, name = ":tensorflow:serving:request_example_count", ":tensorflow:serving:request_example_count_total"
    before = sample_value(scrape(server), family, name, model="hp2")
    response = stub.Classify(request, timeout=60)
    assert [c.classes[0].score for c in response.result.classifications] == [2.5, 3.0, 3.5]
    after = sample_value(scrape(server), family, name, model="hp2")
    assert after - before == 3


# ----------------------------------------------------------------------------- transport options


def test_health_service_reports_serving(server):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(server.grpc_target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "tensorflow.serving.PredictionService"):
            answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=30)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_grpc_answers_on_the_unix_socket_too(server, root):
    with grpc.insecure_channel(f"unix:{root / 'grpc.sock'}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response = stub.Predict(predict_request([[4.0]]), timeout=60)
    assert tf.make_ndarray(response.outputs["y"]).tolist() == [[4.0]]


def test_cors_headers(server):
    preflight = requests.options(
        server.rest_url + "/v1/models/hp2:predict",
        headers={"Origin": "http://example.com", "Access-Control-Request-Method": "POST"},
        timeout=30,
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "*"
    response = requests.get(
        server.rest_url + "/v1/models/hp2", headers={"Origin": "http://example.com"}, timeout=30
    )
    assert response.headers["access-control-allow-origin"] == "*"


def test_tensor_content_flag_serializes_outputs_as_tensor_content(root):
    server = start(
        "--model_name=hp2",
        f"--model_base_path={root / 'hp2'}",
        "--enable_serialization_as_tensor_content",
        "--rest_api_port=0",
    )
    try:
        with grpc.insecure_channel(server.grpc_target) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            response = stub.Predict(predict_request([[1.0], [2.0]]), timeout=60)
    finally:
        server.stop(grace=1)
    output = response.outputs["y"]
    assert output.tensor_content and not output.float_val
    assert tf.make_ndarray(output).tolist() == [[2.5], [3.0]]


# ----------------------------------------------------------------------------- config reload


def test_model_config_file_is_reloaded_while_serving(tmp_path, root):
    shutil.copytree(root / "hp2", tmp_path / "first")
    tfs_models.save_half_plus_two(str(tmp_path / "second" / "1"), b=3.0)
    config = tmp_path / "models.config"
    fixtures.write_model_config(str(config), {"first": (str(tmp_path / "first"), [])})
    server = start(
        f"--model_config_file={config}",
        "--model_config_file_poll_wait_seconds=0.2",
        "--file_system_poll_wait_seconds=0.2",
    )
    try:
        def available(name):
            response = requests.get(f"{server.rest_url}/v1/models/{name}", timeout=30)
            if response.status_code != 200:
                return False
            return response.json()["model_version_status"][0]["state"] == "AVAILABLE"

        assert available("first")
        config.write_text("model_config_list { this is not a config }")
        fixtures.write_model_config(str(config) + ".new", {"second": (str(tmp_path / "second"), [])})
        assert available("first")  # a config that does not parse keeps the current one
        os.replace(str(config) + ".new", config)
        assert wait_until(lambda: available("second"))
        assert wait_until(lambda: not available("first"))
        response = requests.post(
            f"{server.rest_url}/v1/models/second:predict", json={"instances": [[2.0]]}, timeout=30
        )
        assert response.json() == {"predictions": [[4.0]]}
        gone = requests.post(
            f"{server.rest_url}/v1/models/first:predict", json={"instances": [[2.0]]}, timeout=30
        )
        assert gone.status_code == 404
    finally:
        server.stop(grace=1)


# ----------------------------------------------------------------------------- warmup


def _with_classify_warmup(source, destination, signature):
    shutil.copytree(source, destination)
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "hp2"
    request.model_spec.signature_name = signature
    request.input.example_list.examples.append(tfs_models.example(x=1.0))
    log = prediction_log_pb2.PredictionLog(
        classify_log=prediction_log_pb2.ClassifyLog(request=request)
    )
    os.makedirs(os.path.join(destination, "assets.extra"))
    with tf.io.TFRecordWriter(
        os.path.join(destination, "assets.extra", "tf_serving_warmup_requests")
    ) as writer:
        writer.write(log.SerializeToString())


def test_classify_warmup_records_are_replayed_and_a_failing_one_fails_the_load(tmp_path, root):
    source = str(root / "hp2" / "00000123")
    _with_classify_warmup(source, str(tmp_path / "hp2" / "1"), "classify_x_to_y")
    _with_classify_warmup(source, str(tmp_path / "hp2" / "2"), "no_such_signature")
    from keras_dropout.serving.servables import ModelConfig, ModelManager

    manager = ModelManager(
        [ModelConfig("hp2", str(tmp_path / "hp2"), version_policy="all")],
        file_system_poll_wait_seconds=0,
    )
    manager.start()
    try:
        statuses = {s.version: s for s in manager.status("hp2").model_version_status}
    finally:
        manager.stop()
    assert statuses[1].status.error_code == 0
    assert statuses[2].status.error_code == 3  # INVALID_ARGUMENT
    assert "Warmup record 1" in statuses[2].status.error_message
    assert "no_such_signature" in statuses[2].status.error_message


def test_disabled_warmup_skips_the_replay(tmp_path, root):
    _with_classify_warmup(
        str(root / "hp2" / "00000123"), str(tmp_path / "hp2" / "7"), "no_such_signature"
    )
    server = start(
        "--model_name=hp2", f"--model_base_path={tmp_path / 'hp2'}", "--enable_model_warmup=false"
    )
    try:
        status = server.manager.status("hp2").model_version_status[0]
    finally:
        server.stop(grace=1)
    assert status.state == status.AVAILABLE


# ----------------------------------------------------------------------------- flags


def test_every_ignored_flag_is_accepted_and_named_in_a_warning(root, caplog):
    flags = []
    for name, (kind, _) in server_module.IGNORED_FLAGS.items():
        value = {int: "1", float: "0.5", str: "x"}.get(kind, "true")
        flags.append(f"--{name}={value}")
    args = parse_flags("--model_name=hp2", f"--model_base_path={root / 'hp2'}", *flags)
    with caplog.at_level(logging.WARNING, logger="keras_dropout.serving"):
        server = server_module.server_from_args(args)
    del server  # never started
    for name in server_module.IGNORED_FLAGS:
        assert any(f"--{name} " in record.message and "ignored" in record.message
                   for record in caplog.records), name


@pytest.mark.parametrize("text, expected", [("", True), ("=true", True), ("=1", True),
                                            ("=false", False), ("=0", False)])
def test_boolean_flags_take_tf_servings_forms(text, expected):
    assert parse_flags(f"--enable_batching{text}").enable_batching is expected


def test_bad_flag_values_are_refused():
    with pytest.raises(SystemExit):
        parse_flags("--enable_batching=maybe")
    with pytest.raises(ValueError, match="key=value"):
        server_module.parse_grpc_channel_arguments("grpc.max_connection_age_ms")
    assert server_module.parse_grpc_channel_arguments("a=1,b=x") == [("a", 1), ("b", "x")]


def test_bad_batching_and_monitoring_files_are_refused(tmp_path, root):
    bad = tmp_path / "bad.config"
    bad.write_text("max_batch_size { value: -1 ")
    for flag in (f"--batching_parameters_file={bad}", f"--monitoring_config_file={bad}"):
        extra = ["--enable_batching"] if "batching" in flag else []
        args = parse_flags("--model_name=hp2", f"--model_base_path={root / 'hp2'}", flag, *extra)
        with pytest.raises(ValueError, match=str(bad)):
            server_module.server_from_args(args)


def test_same_grpc_and_rest_port_is_refused(root):
    args = parse_flags("--port=9000", "--rest_api_port=9000", f"--model_base_path={root / 'hp2'}")
    with pytest.raises(ValueError, match="cannot be same as --port"):
        server_module.server_from_args(args)


def test_version_flag_prints_tf_servings_two_lines(capsys):
    assert server_module.serve_forever(parse_flags("--version")) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("TensorFlow ModelServer: keras-dropout")
    assert lines[1] == f"TensorFlow Library: {tf.__version__}"


def test_monitoring_disabled_serves_no_metrics(tmp_path, root):
    config = tmp_path / "monitoring.config"
    config.write_text("prometheus_config { enable: false }\n")
    server = start(
        "--model_name=hp2", f"--model_base_path={root / 'hp2'}", f"--monitoring_config_file={config}"
    )
    try:
        response = requests.get(server.rest_url + "/monitoring/prometheus/metrics", timeout=30)
    finally:
        server.stop(grace=1)
    assert response.status_code != 200
    assert "error" in json.loads(response.text)


# ----------------------------------------------------------------------------- review cases


def test_reload_config_request_swaps_models_and_unloads_a_removed_specific_policy(tmp_path, root):
    from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc

    shutil.copytree(root / "hp2", tmp_path / "first")
    tfs_models.save_half_plus_two(str(tmp_path / "second" / "1"), b=3.0)
    config = tmp_path / "models.config"
    fixtures.write_model_config(
        str(config),
        {"first": (str(tmp_path / "first"), ["model_version_policy { specific { versions: 123 } }"])},
    )
    server = start(f"--model_config_file={config}")
    try:
        first = server.manager.servable("first")
        request = model_management_pb2.ReloadConfigRequest()
        entry = request.config.model_config_list.config.add()
        entry.name, entry.base_path, entry.model_platform = "second", str(tmp_path / "second"), "tensorflow"
        with grpc.insecure_channel(server.grpc_target) as channel:
            reply = model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(
                request, timeout=60
            )
        assert reply.status.error_code == 0
        assert server.manager.wait_until_idle(60)
        response = requests.post(
            f"{server.rest_url}/v1/models/second:predict", json={"instances": [[2.0]]}, timeout=30
        )
        assert response.json() == {"predictions": [[4.0]]}
        # The removed model's version is unloaded although its policy named it.
        status = server.manager._models["first"].versions[123]
        assert status.state == "END" and status.servable is None
        # A request holding the unloaded version still gets its answer.
        assert first.run("", {"x": np.array([[2.0]], np.float32)})["y"].tolist() == [[3.0]]
        bad = model_management_pb2.ReloadConfigRequest()
        bad.config.model_config_list.config.add(name="nameless")  # no base_path
        with grpc.insecure_channel(server.grpc_target) as channel:
            with pytest.raises(grpc.RpcError) as raised:
                model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(
                    bad, timeout=60
                )
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "base_path" in raised.value.details()
    finally:
        server.stop(grace=1)


def test_a_batched_version_being_unloaded_still_answers_requests_in_hand(root):
    from keras_dropout.serving.batching import BatchingOptions
    from keras_dropout.serving.servables import load_servable

    servable = load_servable(
        "hp2",
        123,
        str(root / "hp2" / "00000123"),
        batching=BatchingOptions(max_batch_size=4, num_batch_threads=1),
    )
    servable.close()
    assert servable.run("", {"x": np.array([[2.0]], np.float32)})["y"].tolist() == [[3.0]]


def test_session_config_file_is_applied_and_a_bad_one_refused(tmp_path, root):
    good = tmp_path / "session.config"
    good.write_text("allow_soft_placement: true\nintra_op_parallelism_threads: 1\n")
    args = parse_flags(
        "--model_name=hp2", f"--model_base_path={root / 'hp2'}",
        f"--tensorflow_session_config_file={good}", "--tensorflow_inter_op_parallelism=1",
    )
    server = server_module.server_from_args(args)
    options = server.manager._loader.keywords
    assert options["session_config"].allow_soft_placement
    assert options["session_config"].inter_op_parallelism_threads == 1
    bad = tmp_path / "bad.config"
    bad.write_text("no_such_field: 3\n")
    args = parse_flags("--model_base_path=/x", f"--tensorflow_session_config_file={bad}")
    with pytest.raises(ValueError, match="tensorflow.ConfigProto"):
        server_module.server_from_args(args)
