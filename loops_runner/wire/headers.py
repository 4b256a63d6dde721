"""HTTP header names and error-source codes of the protocol (spec 2.1, 2.2, 6.2).

The client sets and reads these, and the servers read and set them; both
import them from here so a renamed header cannot reach only one side.
"""

# Identity and error opt-in, on every client request.
ACCEPT_ERROR_HEADER = "X-Baseten-Accept-Error"
# Routing: the run (trainer ops, paired samplers) or the standalone sampler.
RUN_ID_HEADER = "X-Run-Id"
SAMPLER_ID_HEADER = "X-Sampler-Id"
# Which weights a sample uses: a pinned checkpoint, or the live adapter at
# least at this version.
CHECKPOINT_PATH_HEADER = "X-Checkpoint-Path"
MIN_POLICY_VERSION_HEADER = "X-Min-Policy-Version"
# Replica affinity of related samples.
AFFINITY_HEADER = "X-Baseten-Session-ID"
# One per submit, reused by its retries: the server runs an operation once.
IDEMPOTENCY_KEY_HEADER = "Idempotency-Key"
# The adapter version a sample was generated with (sampler answers).
POLICY_VERSION_RESPONSE_HEADER = "x-trainers-policy-version"

# Which check rejected a request, on answers to clients that opted in.
ERROR_SOURCE_HEADER = "X-Baseten-Error-Source"
ERROR_CODE_HEADER = "X-Baseten-Error-Code"
# The gateway's own refusals: a 4xx with this source never clears on retry.
GATEWAY_ERROR_SOURCE = "06"
# A deactivated model version stays refused until reactivated.
DEACTIVATED_MODEL_SOURCE = "01"
DEACTIVATED_MODEL_CODE = "631"
