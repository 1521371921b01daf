"""Contrastive training over a mixture version, mteb evaluation, model soup and export."""
