"""`trdeploy calibrate`: measure a live vLLM server (or read bench reports) and fit the latency and memory models."""
