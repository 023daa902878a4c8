"""The vLLM adapter: `EcoschedScheduler` for vLLM's `--scheduler-cls` (vLLM 0.32 only, checked at
start-up) and `TimedAsyncScheduler`, vLLM's stock scheduler with the same step timing, for
comparisons. Import the classes from their modules (`ecosched_adapters.vllm.scheduler`,
`ecosched_adapters.vllm.timed`): this package itself does not import vLLM."""

SCHEDULER_CLS = "ecosched_adapters.vllm.scheduler.EcoschedScheduler"
TIMED_STOCK_CLS = "ecosched_adapters.vllm.timed.TimedAsyncScheduler"
