"""Latency / throughput / memory suite, HTTP load, reports and plots."""
