"""Triage model layer: acuity scale, rules, reports, prompts, engine, queue, datasets, training."""
