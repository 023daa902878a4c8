"""What every server-facing piece shares; for now the load generator of `ecosched bench`
(`bench`: requests and streaming, `bench_runner`: one invocation, `bench_metrics`: results rows,
`server_stats`: counters read from the server, `bench_cli`: the command line)."""
