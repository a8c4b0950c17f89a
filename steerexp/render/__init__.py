"""Rendering of run results shared by a run and a sweep report: the journal table and the dose-response plots."""
