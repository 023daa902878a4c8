"""ecosched as TGI's router: the core drives TGI's shards over TGI's v3 gRPC protocol.

TGI keeps batching and the KV block table in its router; the shard (`text-generation-server`)
executes the batches, blocks and slots it is sent. This package replaces the router:

- `proto/`: ecosched's own `.proto` of the v3 shard protocol and its generated modules;
- `client`: the sharded gRPC client (every rank gets every call);
- `blocks`: the router's block table, the physical side of the core's ledger;
- `router`: the batching loop, one core decision per shard forward;
- `http`: TGI's HTTP API (`/generate`, `/generate_stream`, `/`, OpenAI routes, `/metrics`, ...);
- `launcher_cli`: the `text-generation-router` console script TGI's launcher starts;
- `standin`: a protocol-faithful stand-in shard that checks every assumption the real one makes.
"""
