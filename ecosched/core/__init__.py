"""The policy core: requests, the KV block ledger, queues, decisions, the predictor protocol and
the scheduler. Pure and deterministic: it imports no engine, HTTP stack, torch or onnxruntime."""
