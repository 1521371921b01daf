"""Evaluation through mteb: the local suite from files, official tasks from the HF cache, runs."""
