"""The shortest complete Loops round trip: tokenize, mask, train, publish, sample.

Written exactly as for Baseten Loops: only the import line differs (there it
is ``from baseten.loops import ...``). The client finds its control plane in
``LOOPS_BASE_URL`` and its key in ``BASETEN_API_KEY``:

    loops-runner serve control-plane --port 8321 &
    LOOPS_BASE_URL=http://127.0.0.1:8321 python examples/minimal.py

On Baseten, set ``BASETEN_API_KEY`` and ``BASE_MODEL=Qwen/Qwen3-8B`` instead.
"""

import os

from loops_runner.sdk import (
    AdamParams,
    Datum,
    ModelInput,
    SamplingParams,
    ServiceClient,
    TensorData,
)

BASE_MODEL = os.environ.get("BASE_MODEL", "tiny")
STEPS = int(os.environ.get("STEPS", "8"))

service_client = ServiceClient()
training_client = service_client.create_lora_training_client(base_model=BASE_MODEL, rank=16)
tokenizer = training_client.get_tokenizer()

# One prompt/answer pair. The model reads prompt + answer and learns to predict
# each next token; the prompt's tokens get weight 0, so only the answer is learned.
prompt_tokens = tokenizer.encode("Q: What is the capital of France?\nA:", add_special_tokens=False)
answer_tokens = [*tokenizer.encode(" Paris.", add_special_tokens=False), tokenizer.eos_token_id]
tokens = prompt_tokens + answer_tokens
inputs, targets = tokens[:-1], tokens[1:]
weights = [0.0] * (len(prompt_tokens) - 1) + [1.0] * len(answer_tokens)
datum = Datum(
    model_input=ModelInput.from_ints(inputs),
    loss_fn_inputs={
        "target_tokens": TensorData(data=targets, dtype="int64", shape=[len(targets)]),
        "weights": TensorData(data=weights, dtype="float32", shape=[len(weights)]),
    },
)

for step in range(STEPS):
    forward_backward = training_client.forward_backward([datum], loss_fn="cross_entropy")
    optim_step = training_client.optim_step(AdamParams(learning_rate=1e-2))
    print(f"step {step}: loss {forward_backward.result().loss:.4f}")
    optim_step.result()

# Publish the adapter to the run's sampler and sample the answer from it.
sampling_client = training_client.save_weights_and_get_sampling_client(name="minimal")
result = sampling_client.sample(
    prompt=ModelInput.from_ints(prompt_tokens),
    num_samples=1,
    sampling_params=SamplingParams(max_tokens=len(answer_tokens), temperature=0.0),
)
print("sampled:", repr(tokenizer.decode(result.sequences[0].tokens)))
print("policy version:", result.policy_version)
