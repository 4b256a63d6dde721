"""Wire types: JSON round trips on the spec's examples and clear validation errors."""

from __future__ import annotations

import json
import math

import pytest
from pydantic import TypeAdapter, ValidationError

from loops_runner import wire

SPEC_DATUM = {
    "model_input": {"chunks": [{"type": "encoded_text", "tokens": [1, 2, 3]}]},
    "loss_fn_inputs": {
        "target_tokens": {"data": [2, 3, 4], "dtype": "int64", "shape": [3]},
        "weights": {"data": [0.0, 1.0, 1.0], "dtype": "float32", "shape": [3]},
    },
    "routed_experts_ref": None,
}

SPEC_SAMPLE_RESPONSE = {
    "choices": [{
        "index": 0, "text": " Paris", "finish_reason": "stop",
        "token_ids": [12095, 151645],
        "logprobs": {"tokens": ["token_id:12095", "token_id:151645"],
                     "token_logprobs": [-0.12, -0.01]},
        "prompt_token_ids": [3838, 374],
        "prompt_logprobs": [None, {"374": {"logprob": -2.3, "rank": 4, "decoded_token": " is"}}],
    }]
}

SPEC_FILES = {
    "presigned_urls": [{
        "url": "http://127.0.0.1:8000/files/abc", "relative_file_name": "adapter_model.safetensors",
        "node_rank": 0, "size_bytes": 1234, "last_modified": "2025-01-31T12:00:00Z",
    }],
    "next_page_token": None,
    "total_count": 2,
}

SPEC_CHECKPOINT = {
    "id": "ckpt-1", "run_id": "run-1", "checkpoint_id": "step-10", "checkpoint_type": "training",
    "target": "trainer", "created_at": "2025-01-31T12:00:00Z", "base_model": "Qwen/Qwen3-0.6B",
    "lora_adapter_config": {"r": 16}, "size_bytes": 10, "sync_status": None,
}


def roundtrip(model_type, payload):
    parsed = TypeAdapter(model_type).validate_json(json.dumps(payload))
    again = TypeAdapter(model_type).validate_json(TypeAdapter(model_type).dump_json(parsed))
    assert again == parsed
    return parsed


def test_datum_roundtrip_matches_spec_example() -> None:
    datum = roundtrip(wire.Datum, SPEC_DATUM)
    assert datum.model_input.to_ints() == [1, 2, 3]
    assert datum.model_input.length == 3
    assert datum.loss_fn_inputs["target_tokens"].tolist() == [2, 3, 4]
    dumped = json.loads(datum.model_dump_json())
    assert dumped == SPEC_DATUM


def test_sample_response_roundtrip_matches_spec_example() -> None:
    response = roundtrip(wire.CompletionResponse, SPEC_SAMPLE_RESPONSE)
    choice = response.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.prompt_logprobs is not None and choice.prompt_logprobs[0] is None
    assert choice.prompt_logprobs[1]["374"].logprob == -2.3


def test_files_and_checkpoint_roundtrip() -> None:
    files = roundtrip(wire.CheckpointFilesResponse, SPEC_FILES)
    assert files.presigned_urls[0].size_bytes == 1234
    checkpoint = roundtrip(wire.Checkpoint, SPEC_CHECKPOINT)
    assert checkpoint.lora_adapter_config.rank == 16
    # The rank travels under PEFT's key "r", not "rank".
    assert json.loads(checkpoint.model_dump_json())["lora_adapter_config"] == {"r": 16}
    assert checkpoint.created_at.tzinfo is not None


def test_operation_bodies() -> None:
    accepted = roundtrip(wire.OperationAccepted, {"operation_id": "ab12", "schema_version": 1})
    assert accepted.operation_id == "ab12"
    poll = TypeAdapter(wire.OperationPoll)
    done = poll.validate_python({"status": "done", "result": {"step": 0, "lora_rank": 8}})
    assert isinstance(done, wire.OperationDone)
    failed = poll.validate_python({"status": "error", "error": "boom", "error_class": "ValueError"})
    assert isinstance(failed, wire.OperationFailed) and failed.error_class == "ValueError"
    with pytest.raises(ValidationError):
        wire.OperationAccepted.model_validate({"operation_id": "x", "schema_version": 2})


def test_null_is_nan_both_directions() -> None:
    tensor = wire.TensorData.model_validate({"data": [0.5, None], "dtype": "float32",
                                             "shape": [2]})
    assert tensor.data[0] == 0.5 and math.isnan(tensor.data[1])
    assert json.loads(tensor.model_dump_json())["data"] == [0.5, None]


def test_nested_data_is_reshaped() -> None:
    tensor = wire.TensorData.model_validate({"data": [[1, 2, 3], [4, 5, 6]], "dtype": "int64",
                                             "shape": [2, 3]})
    assert tensor.data == [1, 2, 3, 4, 5, 6] and tensor.shape == [2, 3]
    inferred = wire.TensorData.from_list([[1.0, 2.0], [3.0, 4.0]])
    assert inferred.shape == [2, 2]


def test_tensor_torch_roundtrip() -> None:
    torch = pytest.importorskip("torch")
    original = torch.tensor([[1.5, float("nan")], [3.0, 4.0]], dtype=torch.float32)
    tensor = wire.TensorData.from_torch(original)
    assert json.loads(tensor.model_dump_json())["data"] == [1.5, None, 3.0, 4.0]
    back = wire.TensorData.model_validate_json(tensor.model_dump_json()).to_torch()
    assert back.shape == (2, 2) and back.dtype == torch.float32
    assert torch.isnan(back[0, 1]) and back[1, 1] == 4.0


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({"data": [1, 2], "dtype": "float99", "shape": [2]}, "dtype 'float99' is not supported"),
        ({"data": [1, 2, 3], "dtype": "int64", "shape": [2]}, "shape [2] needs 2 values"),
        ({"data": [1.5], "dtype": "int64", "shape": [1]}, "is not an integer"),
        ({"data": ["a"], "dtype": "float32", "shape": [1]}, "is not a number"),
        ({"data": [300], "dtype": "int8", "shape": [1]}, "outside the range of int8"),
        ({"data": [[1, 2], [3]], "dtype": "int64", "shape": [3]}, "ragged"),
    ],
)
def test_invalid_tensor_payloads_name_the_problem(payload: dict, expected: str) -> None:
    with pytest.raises(ValidationError) as caught:
        wire.TensorData.model_validate(payload)
    assert expected in str(caught.value)


def test_invalid_datum_names_the_field() -> None:
    bad_shape = json.loads(json.dumps(SPEC_DATUM))
    bad_shape["loss_fn_inputs"]["weights"]["shape"] = [4]
    with pytest.raises(ValidationError) as caught:
        wire.Datum.model_validate(bad_shape)
    assert caught.value.errors()[0]["loc"][:2] == ("loss_fn_inputs", "weights")

    unknown_chunk = {"model_input": {"chunks": [{"type": "video", "tokens": [1]}]}}
    with pytest.raises(ValidationError) as caught:
        wire.Datum.model_validate(unknown_chunk)
    message = str(caught.value)
    assert "model_input.chunks.0" in message and "'video'" in message


def test_request_limits_name_field_and_limit() -> None:
    with pytest.raises(ValidationError) as caught:
        wire.ForwardBackwardRequest.model_validate({"data": [], "top_k_logprobs": 21})
    assert "top_k_logprobs" in str(caught.value) and "20" in str(caught.value)
    with pytest.raises(ValidationError) as caught:
        wire.ForwardBackwardRequest.model_validate({"data": [], "loss_fn": "mse"})
    assert "loss_fn" in str(caught.value)
    with pytest.raises(ValidationError) as caught:
        wire.SaveStateRequest.model_validate({"name": "../escape"})
    assert "not a valid name" in str(caught.value)
    with pytest.raises(ValidationError) as caught:
        wire.SampleRequest.model_validate({"prompt": [1], "top_p": 0})
    assert "top_p" in str(caught.value)
    with pytest.raises(ValidationError):
        wire.AdamParams.model_validate({"learning_rate": float("nan")})


def test_sessions_accept_no_body_and_old_body() -> None:
    assert wire.CreateSessionRequest.model_validate({}).training_project_id is None
    assert wire.CreateSessionRequest.model_validate(
        {"training_project_id": "p1"}).training_project_id == "p1"


def test_unknown_request_fields_are_ignored() -> None:
    request = wire.OptimStepRequest.model_validate(
        {"seq_id": 3, "run_id": None, "model": "tiny", "future_field": 1,
         "adam_params": {"learning_rate": 1e-3}})
    assert request.adam_params.learning_rate == 1e-3 and request.seq_id == 3
