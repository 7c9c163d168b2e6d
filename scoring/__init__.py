"""Scoring: task suite, metrics and length/JSON compliance for bench."""
