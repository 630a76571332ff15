"""Benchmarks that print figures (hooked up as `clmr-ray bench ...`)."""
