"""A protocol-faithful stand-in for TGI's shards, for testing the router without a GPU.

`StandinShard` serves TGI's generate.v3 gRPC protocol on `unix://{uds_path}-{rank}` and turns every
assumption a real shard makes silently into a gRPC INTERNAL error and a recorded `Violation`.
`main` is its command line (`ecosched standin tgi-shard ...`). See `shard` for the checks and
`outputs` for how prompts script their output.
"""

from ecosched_adapters.tgi.standin.config import StandinConfig
from ecosched_adapters.tgi.standin.kv import KVEntry, ShadowKV
from ecosched_adapters.tgi.standin.outputs import Finish
from ecosched_adapters.tgi.standin.shard import ShardStats, StandinShard, Violation, main

__all__ = ["Finish", "KVEntry", "ShadowKV", "ShardStats", "StandinConfig", "StandinShard", "Violation", "main"]
